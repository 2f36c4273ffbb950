package nodeclient

import (
	"context"
	"fmt"
	"net"
	"strconv"

	consul "github.com/hashicorp/consul/api"
)

// Consul returns a Resolve function that asks the Consul agent at addr for
// the passing gaia-scheduler instances of cluster, the leader first.
func Consul(addr, cluster string) (func(ctx context.Context) ([]string, error), error) {
	cc := consul.DefaultConfig()
	cc.Address = addr
	c, err := consul.NewClient(cc)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) ([]string, error) {
		entries, _, err := c.Health().Service("gaia-scheduler", "cluster="+cluster, true, (&consul.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return nil, err
		}
		var leaders, others []string
		for _, e := range entries {
			u := "http://" + net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port))
			isLeader := false
			for _, t := range e.Service.Tags {
				isLeader = isLeader || t == "leader"
			}
			if isLeader {
				leaders = append(leaders, u)
			} else {
				others = append(others, u)
			}
		}
		if len(leaders)+len(others) == 0 {
			return nil, fmt.Errorf("no passing gaia-scheduler with tag cluster=%s in Consul at %s", cluster, addr)
		}
		return append(leaders, others...), nil
	}, nil
}
