// Package protocol is mira's wire vocabulary: network names, protocol IDs,
// DHT namespaces and topic names. It does no I/O, so every other package can
// agree on names without pulling in a network stack.
package protocol

import (
	"fmt"
	"regexp"
)

// DefaultNetwork is the name of the public mira network.
const DefaultNetwork = "main"

var networkNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// ValidateNetworkName reports whether name can name a mira network: 1 to 32
// lowercase letters, digits or dashes, not starting with a dash. The name
// appears in protocol IDs and topic names, so it must be path-safe.
func ValidateNetworkName(name string) error {
	if !networkNameRE.MatchString(name) {
		return fmt.Errorf("invalid network name %q: use 1-32 lowercase letters, digits or '-', not starting with '-'", name)
	}
	return nil
}

// Prefix is the root of every protocol ID and topic of a network, such as
// "/mira/main". The Kademlia DHT of a network runs under this prefix, so nodes
// of different networks never share a routing table.
func Prefix(network string) string {
	return "/mira/" + network
}
