//go:build cgo && linux

package gpu

import (
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// detectNVML asks the NVIDIA driver's NVML library, loaded at run time. A
// machine without the library gets an error, and Detect falls back.
func detectNVML() ([]Device, error) {
	if ret := nvml.Init(); ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml init: %s", nvml.ErrorString(ret))
	}
	defer nvml.Shutdown()
	count, ret := nvml.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, fmt.Errorf("nvml device count: %s", nvml.ErrorString(ret))
	}
	driver, _ := nvml.SystemGetDriverVersion()
	devs := make([]Device, 0, count)
	for i := 0; i < count; i++ {
		d, ret := nvml.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("nvml device %d: %s", i, nvml.ErrorString(ret))
		}
		name, ret := d.GetName()
		if ret != nvml.SUCCESS {
			return nil, fmt.Errorf("nvml device %d name: %s", i, nvml.ErrorString(ret))
		}
		uuid, _ := d.GetUUID()
		mem, ret := d.GetMemoryInfo()
		vram := 0
		if ret == nvml.SUCCESS {
			vram = int(mem.Total >> 20)
		}
		devs = append(devs, Device{
			Model: NormalizeModel(name), Name: name, VRAMMiB: vram, Count: 1,
			UUID: uuid, Driver: driver, Source: SourceDetected,
		})
	}
	return devs, nil
}
