package market

import "testing"

func TestImageAllowed(t *testing.T) {
	const dgst = "sha256:4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"
	const other = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	cases := []struct {
		allow []string
		image string
		want  bool
	}{
		{nil, "ubuntu", false},
		{[]string{}, "ubuntu:22.04", false},
		// A bare name: every tag and digest of that repository.
		{[]string{"ubuntu"}, "ubuntu", true},
		{[]string{"ubuntu"}, "ubuntu:22.04", true},
		{[]string{"ubuntu"}, "docker.io/library/ubuntu:22.04", true},
		{[]string{"ubuntu"}, "ubuntu@" + dgst, true},
		{[]string{"ubuntu"}, "debian", false},
		{[]string{"ubuntu"}, "evil/ubuntu", false},
		{[]string{"ubuntu"}, "ubuntu.evil.example/ubuntu", false},
		{[]string{"library/ubuntu"}, "ubuntu:1", true},
		// A tag: that tag, without a digest; no tag means latest.
		{[]string{"ubuntu:22.04"}, "ubuntu:22.04", true},
		{[]string{"ubuntu:22.04"}, "ubuntu:24.04", false},
		{[]string{"ubuntu:22.04"}, "ubuntu", false},
		{[]string{"ubuntu:latest"}, "ubuntu", true},
		{[]string{"ubuntu:22.04"}, "ubuntu:22.04@" + dgst, false},
		{[]string{"ubuntu:22.04"}, "ubuntu@" + dgst, false},
		// A digest: that digest.
		{[]string{"ubuntu@" + dgst}, "ubuntu@" + dgst, true},
		{[]string{"ubuntu@" + dgst}, "ubuntu:22.04@" + dgst, true},
		{[]string{"ubuntu@" + dgst}, "ubuntu@" + other, false},
		{[]string{"ubuntu@" + dgst}, "ubuntu", false},
		// A private registry with a port.
		{[]string{"registry.lab:5000/team/train"}, "registry.lab:5000/team/train:v3", true},
		{[]string{"registry.lab:5000/team/train"}, "registry.lab/team/train:v3", false},
		// Image IDs and junk name no repository.
		{[]string{"ubuntu", "sha256"}, dgst, false},
		{[]string{"ubuntu"}, "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945", false},
		{[]string{"ubuntu"}, "Ubuntu", false},
		{[]string{"ubuntu"}, "", false},
		{[]string{"not a ref!", "ubuntu"}, "ubuntu", true},
	}
	for _, c := range cases {
		if got := ImageAllowed(c.allow, c.image); got != c.want {
			t.Errorf("ImageAllowed(%q, %q) = %v, want %v", c.allow, c.image, got, c.want)
		}
	}
}
