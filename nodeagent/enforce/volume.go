package enforce

import (
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// volume is an instance's disk capacity: a sparse file of the allocation's
// size holding an ext4 filesystem, attached to a loop device and mounted
// on the host at VolumeDir/<id>/mnt, which the container gets as a bind
// mount. Writing past it fails with ENOSPC inside the instance and touches
// nothing else. Its loop device is where the instance's disk IO is
// throttled.
type volume struct {
	dir, img, mnt, dev string
}

var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$`)

func volName(id string) string {
	if safeName.MatchString(id) {
		return id
	}
	return "x" + hex.EncodeToString([]byte(id))
}

func volPaths(root, id string) *volume {
	d := filepath.Join(root, volName(id))
	return &volume{dir: d, img: filepath.Join(d, "disk.img"), mnt: filepath.Join(d, "mnt")}
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// createVolume makes (or, when it exists and is mounted, reuses) the
// instance's volume.
func createVolume(root, id string, size int64) (*volume, error) {
	v := volPaths(root, id)
	if dev := mountedDevice(v.mnt); dev != "" {
		v.dev = dev
		return v, nil
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return nil, missing("mkfs.ext4 (e2fsprogs) for per-instance volumes")
	}
	if err := os.MkdirAll(v.mnt, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(v.img, os.O_CREATE|os.O_RDWR|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		return nil, err
	}
	if err := mkfsFit(v.img, size); err != nil {
		os.RemoveAll(v.dir)
		return nil, err
	}
	dev, err := run("losetup", "--find", "--show", v.img)
	if err != nil {
		os.RemoveAll(v.dir)
		return nil, missing("loop devices (losetup): %v", err)
	}
	v.dev = dev
	if err := unix.Mount(dev, v.mnt, "ext4", 0, ""); err != nil {
		_ = v.remove()
		return nil, fmt.Errorf("enforce: mount %s on %s: %w", dev, v.mnt, err)
	}
	return v, nil
}

// mkfsFit makes the ext4 filesystem so that the instance can write its
// whole allocation: ext4's own metadata (journal, inode tables) and the
// clusters it keeps back from statfs (2%, at most 4096) are added to the
// file's size after a first mkfs has shown how much they take. No
// reserved-for-root blocks (-m 0); nodiscard: mkfs returns at once on a
// sparse file.
func mkfsFit(img string, size int64) error {
	mkfs := func() error {
		_, err := run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", img)
		return err
	}
	if err := mkfs(); err != nil {
		return err
	}
	out, err := run("dumpe2fs", "-h", img)
	if err != nil {
		return err
	}
	var blocks, free, bs int64
	for _, l := range strings.Split(out, "\n") {
		k, val, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
		switch k {
		case "Block count":
			blocks = n
		case "Free blocks":
			free = n
		case "Block size":
			bs = n
		}
	}
	if bs == 0 {
		return fmt.Errorf("enforce: dumpe2fs -h %s: no block size", img)
	}
	resv := min(blocks*2/100, 4096)
	if avail := (free - resv) * bs; avail < size {
		if err := os.Truncate(img, size+(size-avail)); err != nil {
			return err
		}
		return mkfs()
	}
	return nil
}

// openVolume finds an existing, mounted volume (agent restart).
func openVolume(root, id string) (*volume, error) {
	v := volPaths(root, id)
	v.dev = mountedDevice(v.mnt)
	if v.dev == "" {
		return nil, fmt.Errorf("enforce: volume of %s is not mounted at %s", id, v.mnt)
	}
	return v, nil
}

// mountedDevice is the device mounted on path, "" if none.
func mountedDevice(path string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		fs := strings.Fields(l)
		if len(fs) < 10 || fs[4] != path {
			continue
		}
		for i := 6; i < len(fs)-2; i++ {
			if fs[i] == "-" {
				return fs[i+2]
			}
		}
	}
	return ""
}

func (v *volume) remove() error {
	var errs []error
	if mountedDevice(v.mnt) != "" {
		if err := unix.Unmount(v.mnt, 0); err != nil {
			errs = append(errs, unix.Unmount(v.mnt, unix.MNT_DETACH))
		}
	}
	if v.dev != "" {
		if _, err := run("losetup", "-d", v.dev); err != nil {
			errs = append(errs, err)
		}
	} else {
		detachLoops(v.img)
	}
	errs = append(errs, os.RemoveAll(v.dir))
	return joinErrs(errs)
}

// detachLoops detaches every loop device backed by img.
func detachLoops(img string) {
	out, _ := run("losetup", "-j", img)
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, ":"); i > 0 {
			_, _ = run("losetup", "-d", l[:i])
		}
	}
}

func removeVolume(root, id string) error {
	v := volPaths(root, id)
	if _, err := os.Stat(v.dir); os.IsNotExist(err) {
		return nil
	}
	v.dev = mountedDevice(v.mnt)
	return v.remove()
}

func removeOrphanVolumes(root string, keep map[string]bool) error {
	ents, err := os.ReadDir(root)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if e.IsDir() && !keep[e.Name()] {
			v := &volume{dir: filepath.Join(root, e.Name())}
			v.img, v.mnt = filepath.Join(v.dir, "disk.img"), filepath.Join(v.dir, "mnt")
			v.dev = mountedDevice(v.mnt)
			errs = append(errs, v.remove())
		}
	}
	return joinErrs(errs)
}

func (v *volume) usage() (used, size int64) {
	var st unix.Statfs_t
	if err := unix.Statfs(v.mnt, &st); err != nil {
		return 0, 0
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize, int64(st.Blocks) * st.Bsize
}
