package nodeagent

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/gaia-registry/gaia/scheduler/api"
	"github.com/gaia-registry/gaia/scheduler/nodeclient"
)

// NodeClient is the Scheduler of the node protocol's Go client
// (scheduler/nodeclient), which follows the leader and finds the
// schedulers through Consul.
type NodeClient struct {
	C *nodeclient.Client
}

// NewNodeClient speaks for the node req describes to the schedulers at
// servers (and those resolve finds, when set: nodeclient.Consul).
func NewNodeClient(servers []string, resolve func(context.Context) ([]string, error), token string, req RegisterRequest) *NodeClient {
	return &NodeClient{C: nodeclient.New(nodeclient.Options{
		Servers: servers, Resolve: resolve, Token: token,
		Node: api.RegisterRequest{Name: req.Name, IDC: req.IDC, Labels: req.Labels, Address: req.Address,
			Capacity: req.Capacity, Reserved: req.Reserved},
	})}
}

// Register implements Scheduler: it registers the node the client was
// made for.
func (n *NodeClient) Register(ctx context.Context, _ RegisterRequest) (RegisterResponse, error) {
	r, err := n.C.Register(ctx)
	if err != nil {
		return RegisterResponse{}, err
	}
	return RegisterResponse{NodeID: r.NodeID, PollInterval: r.PollInterval}, nil
}

// PollDesired implements Scheduler.
func (n *NodeClient) PollDesired(ctx context.Context, version string, wait time.Duration) (*DesiredSet, bool, error) {
	s, changed, err := n.C.Poll(ctx, version, wait)
	if err != nil || !changed {
		return nil, changed, err
	}
	out, err := desiredFromAPI(s)
	return out, err == nil, err
}

// desiredFromAPI converts the scheduler's desired set into the agent's
// through their common JSON (the protocol itself), so a field the
// scheduler adds reaches the agent without a copy to keep in step.
// (Reports go the other way the same way.)
func desiredFromAPI(s *api.DesiredSet) (*DesiredSet, error) {
	out := &DesiredSet{}
	if err := viaJSON(s, out); err != nil {
		return nil, fmt.Errorf("the scheduler's desired set: %w", err)
	}
	return out, nil
}

// viaJSON copies in into out through the protocol's JSON.
func viaJSON(in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// Report implements Scheduler.
func (n *NodeClient) Report(ctx context.Context, r Report) error {
	rep := &api.Report{}
	if err := viaJSON(r, rep); err != nil {
		return err
	}
	return n.C.Report(ctx, rep)
}
