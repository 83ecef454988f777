package market

import (
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// ImageAllowed reports whether a docker job may name image on a provider
// whose allowlist is allow. Both sides are Docker references, compared
// normalized ("ubuntu" is "docker.io/library/ubuntu:latest"). An entry
// that is a bare name allows each tag and digest of that repository;
// "name:tag" allows that tag, named without a digest; "name@sha256:..."
// allows that digest. An empty list allows nothing. Image IDs (and
// anything that is not a reference) are never allowed: they name no
// repository the operator chose.
func ImageAllowed(allow []string, image string) bool {
	if _, err := digest.Parse(image); err == nil {
		return false // "sha256:...": an image ID
	}
	ref, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return false
	}
	for _, entry := range allow {
		a, err := reference.ParseNormalizedNamed(entry)
		if err != nil || a.Name() != ref.Name() {
			continue
		}
		if allowsRef(a, ref) {
			return true
		}
	}
	return false
}

// allowsRef reports whether the allowlist entry a allows ref, both of
// one repository.
func allowsRef(a, ref reference.Named) bool {
	refDigest, refDigested := ref.(reference.Digested)
	if d, ok := a.(reference.Digested); ok {
		return refDigested && refDigest.Digest() == d.Digest()
	}
	if t, ok := a.(reference.Tagged); ok {
		// Docker runs a reference with a digest by its digest, whatever
		// its tag says: a tag entry allows only references without one.
		if refDigested {
			return false
		}
		refTag := "latest"
		if rt, ok := ref.(reference.Tagged); ok {
			refTag = rt.Tag()
		}
		return refTag == t.Tag()
	}
	return true // a bare name
}
