// Command gaia-nodeagent is Gaia's node agent: it runs on every machine of
// a cluster, registers the node with the scheduler, and runs the instances
// the scheduler assigns to it through the local dockerd, pulling their
// images from the IDC's Gaia gateway and registering them in the local
// Consul agent.
//
//	gaia-nodeagent --config FILE
//
// Every key can be overridden with GAIA_NODEAGENT_<SECTION>_<KEY>
// (docs/configuration.md). SIGTERM or SIGINT stops the agent gracefully and
// leaves the instances running: the next agent adopts them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/docker/docker/api/types/registry"
	"github.com/docker/docker/client"
	consul "github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/gaia-registry/gaia/nodeagent"
	"github.com/gaia-registry/gaia/nodeagent/enforce"
	"github.com/gaia-registry/gaia/registry/logconfig"
	"github.com/gaia-registry/gaia/registry/yamlconfig"
	"github.com/gaia-registry/gaia/scheduler/nodeclient"
	"github.com/gaia-registry/gaia/scheduler/resource"
)

type config struct {
	Log  logconfig.Config `yaml:"log"`
	HTTP struct {
		Addr         string        `yaml:"addr"`         // /healthz, /readyz, /metrics; default 127.0.0.1:5300
		DrainTimeout time.Duration `yaml:"draintimeout"` // default 10s
	} `yaml:"http"`
	Node struct {
		Name     string            `yaml:"name"`     // default: the hostname
		IDC      string            `yaml:"idc"`      //
		Labels   map[string]string `yaml:"labels"`   //
		Address  string            `yaml:"address"`  // default: the address of the default route's interface
		DataDir  string            `yaml:"datadir"`  // its filesystem's size is the disk capacity; default /var/lib/docker
		Capacity resource.Vector   `yaml:"capacity"` // dimensions set here override detection; diskio, netin, netout come only from here
		Reserved resource.Vector   `yaml:"reserved"` // kept for the system
	} `yaml:"node"`
	Scheduler struct {
		URLs    []string `yaml:"urls"`    // the schedulers' base URLs (a follower points to the leader)
		Cluster string   `yaml:"cluster"` // or: the cluster's name, its schedulers found in Consul
		Token   string   `yaml:"token"`   // the node credential
	} `yaml:"scheduler"`
	Docker struct {
		Host string `yaml:"host"` // default unix:///var/run/docker.sock
	} `yaml:"docker"`
	Registry struct {
		Gateway  string `yaml:"gateway"`  // host[:port] of the IDC's Gaia gateway; images are pulled from it
		Username string `yaml:"username"` // the robot credential
		Password string `yaml:"password"`
	} `yaml:"registry"`
	Consul struct {
		Addr     string `yaml:"addr"`     // the local Consul agent; default 127.0.0.1:8500
		Token    string `yaml:"token"`    //
		Disabled bool   `yaml:"disabled"` // do not register instances
	} `yaml:"consul"`
	Pull struct {
		StallTimeout time.Duration `yaml:"stalltimeout"` // a pull without progress this long is cut and retried; default 1m
		Attempts     int           `yaml:"attempts"`     // default 5
		Backoff      time.Duration `yaml:"backoff"`      // first wait between attempts, doubling; default 1s
		MaxBackoff   time.Duration `yaml:"maxbackoff"`   // default 30s
	} `yaml:"pull"`
	Instances struct {
		PublishIP   string        `yaml:"publiship"`   // host address ports are published on; default 0.0.0.0
		HealthHost  string        `yaml:"healthhost"`  // where the agent's tcp/http checks connect; default 127.0.0.1
		StopTimeout time.Duration `yaml:"stoptimeout"` // graceful stop before SIGKILL; default 10s
	} `yaml:"instances"`
	Images struct {
		GCHighPercent float64 `yaml:"gchighpercent"` // image GC starts when the data directory's filesystem is fuller; default 85
		GCLowPercent  float64 `yaml:"gclowpercent"`  // ... and stops at this; default 80
		GCDisabled    bool    `yaml:"gcdisabled"`    // never remove images
	} `yaml:"images"`
	Agent struct {
		PollWait       time.Duration `yaml:"pollwait"`       // long-poll wait; default 30s (the scheduler's pollInterval wins)
		ReportInterval time.Duration `yaml:"reportinterval"` // default 10s
		Resync         time.Duration `yaml:"resync"`         // default 30s
		RetryInterval  time.Duration `yaml:"retryinterval"`  // default 2s
		UsageInterval  time.Duration `yaml:"usageinterval"`  // resource usage sampled this often; default 15s
	} `yaml:"agent"`
	// Enforce: every resource dimension held on the node (nodeagent/enforce,
	// docs/configuration.md). Off by default: dockerd's CPU and memory
	// limits only.
	Enforce struct {
		Enabled           bool           `yaml:"enabled"`
		CgroupParent      string         `yaml:"cgroupparent"`      // default gaia
		PressureThreshold float64        `yaml:"pressurethreshold"` // EMC looks from this fraction of the allocatable memory; default 0.95
		CheckInterval     time.Duration  `yaml:"checkinterval"`     // EMC's fallback poll; default 1s
		VolumeDir         string         `yaml:"volumedir"`         // per-instance volumes; default /var/lib/gaia/volumes
		VolumeTarget      string         `yaml:"volumetarget"`      // the volume's path in the container; default /data
		WritableLayerDev  string         `yaml:"writablelayerdevice"`
		WritableLayerMax  resource.Bytes `yaml:"writablelayerlimit"` // evict past it; default 0: not checked
		IFBOut            string         `yaml:"ifbout"`             // default gaia-out
		IFBIn             string         `yaml:"ifbin"`              // default gaia-in
		CgroupVersion     int            `yaml:"cgroupversion"`      // 1 or 2; default detected
		// Gate is the static gaia-gate binary every container starts in
		// while network shaping is on, so that its classes exist before
		// its first packet; default gaia-gate beside gaia-nodeagent.
		Gate    string `yaml:"gate"`
		GateDir string `yaml:"gatedir"` // per-instance gate directories; default /var/lib/gaia/gates
	} `yaml:"enforce"`
}

func main() {
	path := flag.String("config", "", "configuration file (YAML)")
	flag.Parse()
	if *path == "" {
		fmt.Fprintln(os.Stderr, "usage: gaia-nodeagent --config FILE")
		os.Exit(2)
	}
	if err := run(*path); err != nil {
		fmt.Fprintf(os.Stderr, "gaia-nodeagent: %v\n", err)
		os.Exit(1)
	}
}

func load(path string) (*config, error) {
	var c config
	if err := yamlconfig.Load(path, os.Environ(), "GAIA_NODEAGENT_",
		[]string{"log", "http", "node", "scheduler", "docker", "registry", "consul", "pull", "instances", "images", "agent"}, &c); err != nil {
		return nil, err
	}
	fail := func(key, format string, args ...any) (*config, error) {
		return nil, fmt.Errorf("%s: %s: %s", path, key, fmt.Sprintf(format, args...))
	}
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = "127.0.0.1:5300"
	}
	if c.HTTP.DrainTimeout == 0 {
		c.HTTP.DrainTimeout = 10 * time.Second
	}
	if c.Node.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fail("node.name", "required (the hostname is unknown: %v)", err)
		}
		c.Node.Name = h
	}
	if c.Node.Address == "" {
		c.Node.Address = defaultAddress()
	}
	if net.ParseIP(c.Node.Address) == nil {
		return fail("node.address", "%q is not an IP address", c.Node.Address)
	}
	if c.Node.DataDir == "" {
		c.Node.DataDir = "/var/lib/docker"
	}
	if len(c.Scheduler.URLs) == 0 && c.Scheduler.Cluster == "" {
		return fail("scheduler.urls", "required (the scheduler's base URLs), or scheduler.cluster")
	}
	if c.Scheduler.Cluster != "" && c.Consul.Disabled {
		return fail("scheduler.cluster", "finding the schedulers needs Consul (consul.disabled is set)")
	}
	for i, u := range c.Scheduler.URLs {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return fail(fmt.Sprintf("scheduler.urls[%d]", i), "%q must be http(s)://host[:port]", u)
		}
		c.Scheduler.URLs[i] = strings.TrimRight(u, "/")
	}
	if c.Scheduler.Token == "" {
		return fail("scheduler.token", "required (the node credential)")
	}
	if c.Docker.Host == "" {
		c.Docker.Host = "unix:///var/run/docker.sock"
	}
	if strings.Contains(c.Registry.Gateway, "/") {
		return fail("registry.gateway", "%q must be host[:port], without a scheme or path", c.Registry.Gateway)
	}
	if (c.Registry.Username == "") != (c.Registry.Password == "") {
		return fail("registry.password", "username and password go together")
	}
	if c.Consul.Addr == "" {
		c.Consul.Addr = "127.0.0.1:8500"
	}
	if c.Pull.StallTimeout == 0 {
		c.Pull.StallTimeout = time.Minute
	}
	if c.Pull.Attempts == 0 {
		c.Pull.Attempts = 5
	}
	if c.Pull.Attempts < 0 {
		return fail("pull.attempts", "must not be negative")
	}
	if c.Pull.Backoff == 0 {
		c.Pull.Backoff = time.Second
	}
	if c.Pull.MaxBackoff == 0 {
		c.Pull.MaxBackoff = 30 * time.Second
	}
	if c.Instances.PublishIP != "" && net.ParseIP(c.Instances.PublishIP) == nil {
		return fail("instances.publiship", "%q is not an IP address", c.Instances.PublishIP)
	}
	if c.Images.GCHighPercent == 0 {
		c.Images.GCHighPercent = 85
	}
	if c.Images.GCLowPercent == 0 {
		c.Images.GCLowPercent = 80
	}
	if !(0 <= c.Images.GCLowPercent && c.Images.GCLowPercent <= c.Images.GCHighPercent && c.Images.GCHighPercent <= 100) { // NaN too
		return fail("images.gclowpercent", "want 0 ≤ gclowpercent ≤ gchighpercent ≤ 100 (have %v and %v)", c.Images.GCLowPercent, c.Images.GCHighPercent)
	}
	e := c.Enforce
	if !(0 <= e.PressureThreshold && e.PressureThreshold <= 1) { // NaN too
		return fail("enforce.pressurethreshold", "want a fraction in (0, 1] (have %v)", e.PressureThreshold)
	}
	if e.CheckInterval < 0 {
		return fail("enforce.checkinterval", "want a duration ≥ 0 (have %v)", e.CheckInterval)
	}
	if e.WritableLayerMax < 0 {
		return fail("enforce.writablelayerlimit", "want a size ≥ 0 (have %d)", e.WritableLayerMax)
	}
	if e.CgroupVersion != 0 && e.CgroupVersion != 1 && e.CgroupVersion != 2 {
		return fail("enforce.cgroupversion", "want 1 or 2 (have %d)", e.CgroupVersion)
	}
	if err := c.Log.Check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// defaultAddress is the source address of the default route (no packet
// is sent: a UDP "connection" only picks the route), else 127.0.0.1.
func defaultAddress() string {
	c, err := net.Dial("udp4", "192.0.2.1:9")
	if err != nil {
		return "127.0.0.1"
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String()
}

// capacity detects CPUs, memory and the data directory's disk; the
// configured dimensions override them.
func capacity(c *config) (resource.Vector, error) {
	var v resource.Vector
	v[resource.CPU] = int64(runtime.NumCPU()) * 1000
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err == nil {
		v[resource.Memory] = int64(si.Totalram) * int64(si.Unit)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(c.Node.DataDir, &st); err != nil {
		return v, fmt.Errorf("node.datadir: %w", err)
	}
	v[resource.Disk] = int64(st.Blocks) * st.Bsize
	for _, d := range resource.Dims {
		if c.Node.Capacity[d] != 0 {
			v[d] = c.Node.Capacity[d]
		}
	}
	return v, nil
}

func run(path string) error {
	cfg, err := load(path)
	if err != nil {
		return err
	}
	log := cfg.Log.New()
	capa, err := capacity(cfg)
	if err != nil {
		return err
	}
	docker, err := client.NewClientWithOpts(client.WithHost(cfg.Docker.Host), client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("docker.host: %w", err)
	}
	defer docker.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	ping, err := docker.Ping(pctx)
	cancel()
	if err != nil {
		return fmt.Errorf("docker.host %s: %w", cfg.Docker.Host, err)
	}
	var cons *consul.Client
	if !cfg.Consul.Disabled {
		cc := consul.DefaultConfig()
		cc.Address, cc.Token = cfg.Consul.Addr, cfg.Consul.Token
		if cons, err = consul.NewClient(cc); err != nil {
			return fmt.Errorf("consul.addr: %w", err)
		}
	}
	auth := ""
	if cfg.Registry.Username != "" {
		auth, err = registry.EncodeAuthConfig(registry.AuthConfig{Username: cfg.Registry.Username,
			Password: cfg.Registry.Password, ServerAddress: cfg.Registry.Gateway})
		if err != nil {
			return err
		}
	}
	var resolve func(context.Context) ([]string, error)
	if cfg.Scheduler.Cluster != "" {
		if resolve, err = nodeclient.Consul(cfg.Consul.Addr, cfg.Scheduler.Cluster); err != nil {
			return fmt.Errorf("scheduler.cluster: %w", err)
		}
	}
	sched := nodeagent.NewNodeClient(cfg.Scheduler.URLs, resolve, cfg.Scheduler.Token, nodeagent.RegisterRequest{
		Name: cfg.Node.Name, IDC: cfg.Node.IDC, Labels: cfg.Node.Labels, Address: cfg.Node.Address,
		Capacity: capa, Reserved: cfg.Node.Reserved})
	var enf enforce.Enforcer
	if e := cfg.Enforce; e.Enabled {
		if e.Gate == "" {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("enforce.gate: not set, and gaia-nodeagent's own path is unknown: %w", err)
			}
			e.Gate = filepath.Join(filepath.Dir(exe), "gaia-gate")
		}
		// The parent's limit is what the scheduler allocates; the link
		// rates are the node's netout/netin capacity.
		n, err := enforce.New(enforce.Config{CgroupParent: e.CgroupParent,
			AllocatableMemory: capa[resource.Memory] - cfg.Node.Reserved[resource.Memory],
			PressureThreshold: e.PressureThreshold, CheckInterval: e.CheckInterval,
			VolumeDir: e.VolumeDir, VolumeTarget: e.VolumeTarget, WritableLayerDevice: e.WritableLayerDev,
			LinkOut: capa[resource.NetOut], LinkIn: capa[resource.NetIn], IFBOut: e.IFBOut, IFBIn: e.IFBIn,
			Gate: e.Gate, GateDir: e.GateDir, CgroupVersion: e.CgroupVersion, Log: log})
		if err != nil {
			return err
		}
		if err := n.Init(); err != nil {
			return fmt.Errorf("enforce: %w", err)
		}
		defer n.Close()
		enf = n
	}
	gcHigh := cfg.Images.GCHighPercent
	if cfg.Images.GCDisabled {
		gcHigh = 0
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if enf != nil {
		reg.MustRegister(enforce.Collector(enf))
	}
	metrics := nodeagent.NewMetrics(reg)
	agent := nodeagent.New(nodeagent.Options{
		Node: cfg.Node.Name, IDC: cfg.Node.IDC, Labels: cfg.Node.Labels, Address: cfg.Node.Address,
		Capacity: capa, Reserved: cfg.Node.Reserved,
		Docker:    docker,
		Scheduler: sched,
		Consul:    cons,
		Puller: &nodeagent.Puller{Docker: docker, Auth: auth, Stall: cfg.Pull.StallTimeout,
			Attempts: cfg.Pull.Attempts, Backoff: cfg.Pull.Backoff, MaxBackoff: cfg.Pull.MaxBackoff},
		Gateway:   cfg.Registry.Gateway,
		PublishIP: cfg.Instances.PublishIP, HealthHost: cfg.Instances.HealthHost, StopTimeout: cfg.Instances.StopTimeout,
		PollWait: cfg.Agent.PollWait, ReportInterval: cfg.Agent.ReportInterval, Resync: cfg.Agent.Resync,
		RetryInterval: cfg.Agent.RetryInterval, UsageInterval: cfg.Agent.UsageInterval,
		DataDir: cfg.Node.DataDir, ImageGCHigh: gcHigh, ImageGCLow: cfg.Images.GCLowPercent,
		Enforcer: enf, WritableLayerLimit: int64(cfg.Enforce.WritableLayerMax),
		Log: log, Metrics: metrics,
	})

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	mux.Handle("GET /v1/instances/{id}/logs", agent.LogsHandler(cfg.Scheduler.Token))
	mux.Handle("POST /v1/instances/{id}/exec", agent.ExecHandler(cfg.Scheduler.Token))
	mux.Handle("GET /v1/instances/{id}/exec/{exec}", agent.ExecStatusHandler(cfg.Scheduler.Token))
	mux.Handle("POST /v1/instances/{id}/exec/{exec}/resize", agent.ExecResizeHandler(cfg.Scheduler.Token))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !agent.Ready() {
			http.Error(w, "not ready: no desired set reconciled yet", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	ln, err := net.Listen("tcp", cfg.HTTP.Addr)
	if err != nil {
		return fmt.Errorf("http.addr: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("gaia-nodeagent started", "node", cfg.Node.Name, "address", cfg.Node.Address, "addr", ln.Addr().String(),
		"docker", cfg.Docker.Host, "dockerAPI", ping.APIVersion, "gateway", cfg.Registry.Gateway, "capacity", capa)
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Run(ctx) }()
	select {
	case err := <-errc:
		stop()
		<-agentDone
		return err
	case err := <-agentDone:
		if err != nil && ctx.Err() == nil {
			return err
		}
	}
	// The instances keep running: the next agent adopts them.
	sctx, cancel := context.WithTimeout(context.Background(), cfg.HTTP.DrainTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped; instances left running")
	return nil
}
