// Package pb holds mira's protobuf wire messages, generated from the .proto
// files beside this one. The protocol package wraps them in signed envelopes
// and validates them; nothing else should use them directly.
package pb

//go:generate protoc --go_out=. --go_opt=paths=source_relative capacity.proto market.proto
