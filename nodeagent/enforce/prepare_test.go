package enforce

import (
	"strings"
	"testing"

	"github.com/gaia-registry/gaia/scheduler/resource"
)

// Prepare's HostConfig additions: the parent, soft limit = request, own
// ceiling (the allocatable memory when the instance has none), no swap,
// shares from millicores, a CFS quota from the CPU ceiling, cpuset, and
// bytes/s and IO/s on the volume's loop device and the writable layer's.
func TestPrepare(t *testing.T) {
	needNode(t)
	n := newNode(Config{CgroupParent: "gaia-x", AllocatableMemory: 1 << 30, VolumeDir: t.TempDir(), WritableLayerDevice: "/dev/vda"}, &cgroupV1{})
	n.cfg.defaults()
	var r resource.Vector
	r[resource.CPU], r[resource.Memory] = 1500, 256<<20
	c, err := n.Prepare(Instance{ID: "p-a", Request: r, CPULimit: 2000, CPUSet: "1"})
	if err != nil {
		t.Fatal(err)
	}
	if c.CgroupParent != "/gaia-x" || c.MemoryReservation != 256<<20 || c.Memory != 1<<30 || c.MemorySwap != 1<<30 ||
		c.CPUShares != 1536 || c.CPUPeriod != 100000 || c.CPUQuota != 200000 || c.CpusetCpus != "1" ||
		len(c.Mounts) != 0 || len(c.BlkioDeviceWriteBps) != 0 {
		t.Fatalf("%+v", c)
	}
	r[resource.Disk], r[resource.DiskIO] = 16<<20, 5<<20
	c, err = n.Prepare(Instance{ID: "p-b", Request: r, MemoryLimit: 512 << 20, DiskIOPS: 300, VolumeTarget: "/var/lib/app"})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stopped("p-b")
	if c.Memory != 512<<20 || len(c.Mounts) != 1 || c.Mounts[0].Target != "/var/lib/app" || !strings.HasSuffix(c.Mounts[0].Source, "/p-b/mnt") {
		t.Fatalf("%+v", c)
	}
	for _, l := range [][]ThrottleDevice{c.BlkioDeviceReadBps, c.BlkioDeviceWriteBps, c.BlkioDeviceReadIOps, c.BlkioDeviceWriteIOps} {
		if len(l) != 2 || !strings.HasPrefix(l[0].Path, "/dev/loop") || l[1].Path != "/dev/vda" {
			t.Fatalf("throttles %+v", l)
		}
	}
	if c.BlkioDeviceWriteBps[0].Rate != 5<<20 || c.BlkioDeviceWriteIOps[0].Rate != 300 {
		t.Fatalf("rates %+v %+v", c.BlkioDeviceWriteBps, c.BlkioDeviceWriteIOps)
	}
	if CPUShares(0) != 2 || CPUShares(1000) != 1024 {
		t.Fatal("CPUShares")
	}
}
