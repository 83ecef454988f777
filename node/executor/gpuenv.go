package executor

import (
	"slices"
	"strings"

	"github.com/mira-market/mira/protocol/pb"
)

// NoDevices is the device list of a job handed no GPU. CUDA (and HIP,
// which reads the same lists) makes visible only the devices listed before
// the first invalid index, so "-1" hides every one. An empty value would
// too for CUDA itself, but tools read "" as "unset" and so as "all"
// (nvidia-container-toolkit does, for NVIDIA_VISIBLE_DEVICES): "-1" means
// none to everyone.
const NoDevices = "-1"

// nvidiaNone is NVIDIA_VISIBLE_DEVICES for a container handed no GPU: the
// NVIDIA container runtime then injects nothing (documented; "none" would
// still mount the driver). CUDA images set NVIDIA_VISIBLE_DEVICES=all in
// their ENV, which on a host whose default runtime is nvidia hands the
// container every GPU unless the container's env overrides it.
const nvidiaNone = "void"

// hostVisibility are the variables through which GPU runtimes on the host
// pick devices by host index: a process job's are always set by the
// executor, whatever its spec says.
var hostVisibility = []string{"CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"}

// processEnv is the environment of a process job: its spec's, with the
// device lists replaced by the GPUs handed to it (host indices), or
// NoDevices for none. HIP_VISIBLE_DEVICES is only removed: HIP applies it
// after ROCR_VISIBLE_DEVICES, as indices into the devices that one left.
func processEnv(spec []*pb.EnvVar, gpus []string) []string {
	env := withoutVars(spec, hostVisibility)
	devs := devList(gpus)
	return append(env, "CUDA_VISIBLE_DEVICES="+devs, "ROCR_VISIBLE_DEVICES="+devs)
}

// containerEnv is the environment of a docker job: its spec's, with
// NVIDIA_VISIBLE_DEVICES the devices of its device request (the engine's
// NVIDIA hook reads it as the host indices to mount), or "void" and
// CUDA_VISIBLE_DEVICES NoDevices for a job handed none. Inside a container
// handed GPUs, CUDA numbers them from 0: the job may narrow its view with
// CUDA_VISIBLE_DEVICES, not widen it.
func containerEnv(spec []*pb.EnvVar, gpus []string) []string {
	if len(gpus) > 0 {
		return append(withoutVars(spec, []string{"NVIDIA_VISIBLE_DEVICES"}), "NVIDIA_VISIBLE_DEVICES="+devList(gpus))
	}
	env := withoutVars(spec, append([]string{"NVIDIA_VISIBLE_DEVICES"}, hostVisibility...))
	return append(env, "NVIDIA_VISIBLE_DEVICES="+nvidiaNone, "CUDA_VISIBLE_DEVICES="+NoDevices, "ROCR_VISIBLE_DEVICES="+NoDevices)
}

func devList(gpus []string) string {
	if len(gpus) == 0 {
		return NoDevices
	}
	return strings.Join(gpus, ",")
}

// withoutVars is spec's environment as NAME=value, less the names in drop.
func withoutVars(spec []*pb.EnvVar, drop []string) []string {
	env := make([]string, 0, len(spec)+3) // not nil: nil would inherit the node's
	for _, e := range spec {
		if !slices.Contains(drop, e.GetName()) {
			env = append(env, e.GetName()+"="+e.GetValue())
		}
	}
	return env
}
