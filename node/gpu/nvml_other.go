//go:build !cgo || !linux

package gpu

import "errors"

// detectNVML needs cgo to load the NVML library; static builds (container
// images) use nvidia-smi instead.
func detectNVML() ([]Device, error) {
	return nil, errors.New("nvml: not available in a build without cgo")
}
