// hog is the node-enforcement tests' workload, built static into the test
// image: hog mem MIB | spin | direct PATH MIB | fill PATH | write PATH MIB |
// udp ADDR N | sleep.
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

func main() {
	switch os.Args[1] {
	case "mem": // allocate and touch MIB MiB, 4 MiB at a time, then hold
		mib, _ := strconv.Atoi(os.Args[2])
		var hold [][]byte
		for i := 0; i < mib; i += 4 {
			b := make([]byte, 4<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			hold = append(hold, b)
			if (i+4)%16 == 0 {
				fmt.Printf("mem %d\n", i+4)
				time.Sleep(20 * time.Millisecond)
			}
		}
		fmt.Printf("held %d\n", mib)
		for {
			time.Sleep(time.Second)
			hold[0][0]++
		}
	case "spin":
		for {
		}
	case "direct": // write MIB MiB with O_DIRECT|O_SYNC, print the seconds
		mib, _ := strconv.Atoi(os.Args[3])
		f, err := os.OpenFile(os.Args[2], os.O_CREATE|os.O_WRONLY|os.O_TRUNC|syscall.O_DIRECT|syscall.O_SYNC, 0o644)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		raw := make([]byte, 1<<20+4096)
		off := 4096 - int(uintptr(unsafe.Pointer(&raw[0]))%4096)
		buf := raw[off : off+1<<20]
		for i := range buf {
			buf[i] = byte(i)
		}
		start := time.Now()
		for i := 0; i < mib; i++ {
			if _, err := f.Write(buf); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
		}
		fmt.Printf("seconds %.3f\n", time.Since(start).Seconds())
	case "fill": // write until it fails, print the error and the bytes
		f, err := os.Create(os.Args[2])
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		buf := make([]byte, 1<<20)
		n := 0
		for {
			w, err := f.Write(buf)
			n += w
			if err == nil {
				err = f.Sync()
			}
			if err != nil {
				fmt.Printf("wrote %d error %v\n", n, err)
				return
			}
		}
	case "write": // write MIB MiB (buffered) to PATH, then hold
		mib, _ := strconv.Atoi(os.Args[3])
		f, err := os.Create(os.Args[2])
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		buf := make([]byte, 1<<20)
		for i := 0; i < mib; i++ {
			if _, err := f.Write(buf); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
		}
		f.Sync()
		fmt.Printf("wrote %d\n", mib)
		for {
			time.Sleep(time.Hour)
		}
	case "udp": // send N 1000-byte datagrams to ADDR (ip:port) the moment it starts, then hold
		n, _ := strconv.Atoi(os.Args[3])
		to, err := net.ResolveUDPAddr("udp", os.Args[2])
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		c, err := net.ListenPacket("udp", ":0") // unconnected: no ICMP errors on later writes
		if err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		b := make([]byte, 1000)
		for i := 0; i < n; i++ {
			if _, err := c.WriteTo(b, to); err != nil {
				fmt.Println(err)
				os.Exit(1)
			}
		}
		fmt.Printf("sent %d\n", n)
		for {
			time.Sleep(time.Hour)
		}
	case "sleep":
		for {
			time.Sleep(time.Hour)
		}
	}
}
