// tcprelay is the floor of what relaying bytes through a second process
// costs, for make bench-gateway: a plain TCP relay in front of one
// server, each connection's bytes moved socket to socket in the kernel
// (TCPConn.ReadFrom: splice(2)), no HTTP parsed, nothing else done. The
// gateway with redirect: off does this and more; where it comes out at
// the relay's figure, what is left is the relaying itself, not the
// gateway's code.
//
//	tcprelay LISTEN-ADDR UPSTREAM-ADDR
package main

import (
	"fmt"
	"net"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: tcprelay LISTEN-ADDR UPSTREAM-ADDR")
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcprelay:", err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil { // EMFILE and the like: wait, do not end the run
			fmt.Fprintln(os.Stderr, "tcprelay:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go relay(c.(*net.TCPConn), os.Args[2])
	}
}

func relay(c *net.TCPConn, upstream string) {
	defer c.Close()
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.(*net.TCPConn).ReadFrom(c)
		u.(*net.TCPConn).CloseWrite()
	}()
	c.ReadFrom(u)
	c.CloseWrite()
	<-done
}
