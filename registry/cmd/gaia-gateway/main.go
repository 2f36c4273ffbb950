// Command gaia-gateway is the entry point of one IDC of a Gaia registry
// cluster: it proxies to the healthy gaia-registry servers of its IDC,
// discovered in Consul (registry/gateway).
//
//	gaia-gateway --config FILE
//
// GAIA_GATEWAY_* variables override config keys (GAIA_GATEWAY_HTTP_ADDR,
// GAIA_GATEWAY_IDC, GAIA_GATEWAY_CONSUL_ADDR, ...). SIGINT or SIGTERM drain
// in-flight requests and exit 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	consul "github.com/hashicorp/consul/api"

	"github.com/gaia-registry/gaia/registry/gateway"
)

func main() {
	configPath := flag.String("config", "", "gateway configuration file (YAML)")
	flag.Parse()
	if *configPath == "" {
		fmt.Fprintln(os.Stderr, "usage: gaia-gateway --config FILE")
		os.Exit(2)
	}
	if err := run(*configPath); err != nil {
		fmt.Fprintf(os.Stderr, "gaia-gateway: %v\n", err)
		os.Exit(1)
	}
}

func run(configPath string) error {
	cfg, err := gateway.LoadConfig(configPath, os.Environ())
	if err != nil {
		return err
	}
	log := cfg.Log.New()
	cc := consul.DefaultConfig()
	cc.Address = cfg.Consul.Addr
	cc.Token = cfg.Consul.Token
	client, err := consul.NewClient(cc)
	if err != nil {
		return fmt.Errorf("consul.addr: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	g := gateway.New(cfg, log)
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	go g.Watch(watchCtx, client)
	go g.Listen(watchCtx)
	return g.Serve(ctx)
}
