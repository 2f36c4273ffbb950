package hdfs

import (
	"fmt"
	"math"
	"os/user"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/colinmarc/hdfs/v2/hadoopconf"
)

// Defaults for the optional parameters.
const (
	defaultRootDirectory = "/gaia/registry"
	defaultMaxThreads    = 100
	defaultMaxClients    = 256
	defaultDialTimeout   = 10 * time.Second
	defaultIOTimeout     = 60 * time.Second
	// HDFS checksums every 512 bytes; a block size must be a multiple.
	bytesPerChecksum = 512
	maxReplication   = 512
)

// DriverParameters is the documented configuration surface of the driver
// (`storage: hdfs: {...}` in a registry config). See docs/configuration.md.
type DriverParameters struct {
	// Namenodes lists NameNode RPC addresses (host:port). With more than one
	// (an HA pair), the client fails over to the next on errors or standby.
	Namenodes []string
	// RootDirectory is the HDFS directory under which every path lives.
	RootDirectory string
	// User is the HDFS user the driver acts as.
	User string
	// BlockSize of new files in bytes; 0 means the cluster's default.
	BlockSize int64
	// Replication of new files; 0 means the cluster's default.
	Replication int
	// MaxThreads bounds concurrent driver calls (and idle pooled clients).
	MaxThreads uint64
	// MaxClients caps the HDFS clients (NameNode connections) open at
	// once: one per running call and per open reader or writer. Beyond
	// it, calls and opens wait for a client. 0 means the default.
	MaxClients uint64
	// HadoopConfDir holds core-site.xml/hdfs-site.xml; namenodes and client
	// settings are read from it where not given explicitly.
	HadoopConfDir string
	// UseDatanodeHostname connects to DataNodes by hostname, not IP.
	UseDatanodeHostname bool
	// DataTransferProtection is "", "authentication", "integrity" or "privacy".
	DataTransferProtection string
	// DialTimeout bounds connecting to a NameNode or DataNode.
	DialTimeout time.Duration
	// IOTimeout bounds each read or write on an open file's DataNode
	// connection, so a dead DataNode fails a transfer instead of hanging it.
	IOTimeout time.Duration
}

var knownParameters = map[string]bool{
	"namenodes": true, "rootdirectory": true, "user": true, "blocksize": true,
	"replication": true, "maxthreads": true, "maxclients": true, "hadoopconfdir": true,
	"usedatanodehostname": true, "datatransferprotection": true,
	"dialtimeout": true, "iotimeout": true,
}

// paramError names the offending key, so a bad config is fixed in one look.
func paramError(key string, format string, args ...any) error {
	return fmt.Errorf("hdfs storage driver: parameter %q: %s", key, fmt.Sprintf(format, args...))
}

func fromParametersImpl(parameters map[string]any) (*DriverParameters, error) {
	p := &DriverParameters{
		RootDirectory: defaultRootDirectory,
		MaxThreads:    defaultMaxThreads,
		MaxClients:    defaultMaxClients,
		DialTimeout:   defaultDialTimeout,
		IOTimeout:     defaultIOTimeout,
	}
	for k := range parameters {
		if !knownParameters[strings.ToLower(k)] {
			return nil, paramError(k, "unknown parameter (known: namenodes, rootdirectory, user, blocksize, replication, maxthreads, maxclients, hadoopconfdir, usedatanodehostname, datatransferprotection, dialtimeout, iotimeout)")
		}
	}
	get := func(key string) (any, bool) {
		for k, v := range parameters {
			if strings.EqualFold(k, key) && v != nil {
				return v, true
			}
		}
		return nil, false
	}

	if v, ok := get("namenodes"); ok {
		nn, err := stringList(v)
		if err != nil {
			return nil, paramError("namenodes", "%v", err)
		}
		for _, a := range nn {
			if _, port, found := strings.Cut(a, ":"); !found || port == "" {
				return nil, paramError("namenodes", "address %q must be host:port", a)
			}
		}
		p.Namenodes = nn
	}
	if v, ok := get("rootdirectory"); ok {
		s := fmt.Sprint(v)
		if !strings.HasPrefix(s, "/") {
			return nil, paramError("rootdirectory", "must be an absolute HDFS path, got %q", s)
		}
		p.RootDirectory = path.Clean(s)
	}
	if v, ok := get("user"); ok {
		p.User = fmt.Sprint(v)
	}
	if v, ok := get("blocksize"); ok {
		n, err := toInt(v)
		if err != nil || n < 0 || n%bytesPerChecksum != 0 {
			return nil, paramError("blocksize", "must be a non-negative multiple of %d bytes, got %v", bytesPerChecksum, v)
		}
		p.BlockSize = n
	}
	if v, ok := get("replication"); ok {
		n, err := toInt(v)
		if err != nil || n < 0 || n > maxReplication {
			return nil, paramError("replication", "must be between 1 and %d (0 for the cluster default), got %v", maxReplication, v)
		}
		p.Replication = int(n)
	}
	if v, ok := get("maxthreads"); ok {
		n, err := toInt(v)
		if err != nil || n < 1 {
			return nil, paramError("maxthreads", "must be a positive integer, got %v", v)
		}
		p.MaxThreads = uint64(n)
	}
	if v, ok := get("maxclients"); ok {
		n, err := toInt(v)
		if err != nil || n < 1 {
			return nil, paramError("maxclients", "must be a positive integer, got %v", v)
		}
		p.MaxClients = uint64(n)
	}
	if v, ok := get("usedatanodehostname"); ok {
		b, err := strconv.ParseBool(fmt.Sprint(v))
		if err != nil {
			return nil, paramError("usedatanodehostname", "must be true or false, got %v", v)
		}
		p.UseDatanodeHostname = b
	}
	if v, ok := get("datatransferprotection"); ok {
		s := strings.ToLower(fmt.Sprint(v))
		switch s {
		case "", "authentication", "integrity", "privacy":
			p.DataTransferProtection = s
		default:
			return nil, paramError("datatransferprotection", "must be authentication, integrity or privacy, got %q", s)
		}
	}
	for _, d := range []struct {
		key string
		dst *time.Duration
	}{{"dialtimeout", &p.DialTimeout}, {"iotimeout", &p.IOTimeout}} {
		if v, ok := get(d.key); ok {
			t, err := toDuration(v)
			if err != nil || t <= 0 {
				return nil, paramError(d.key, "must be a positive duration such as 30s, got %v", v)
			}
			*d.dst = t
		}
	}
	if v, ok := get("hadoopconfdir"); ok {
		p.HadoopConfDir = fmt.Sprint(v)
		conf, err := hadoopconf.Load(p.HadoopConfDir)
		if err != nil {
			return nil, paramError("hadoopconfdir", "%v", err)
		}
		if len(conf) == 0 {
			return nil, paramError("hadoopconfdir", "no core-site.xml or hdfs-site.xml in %s", p.HadoopConfDir)
		}
		if conf["hadoop.security.authentication"] == "kerberos" {
			return nil, paramError("hadoopconfdir", "hadoop.security.authentication=kerberos is not supported by this driver yet")
		}
		if len(p.Namenodes) == 0 {
			p.Namenodes = conf.Namenodes()
		}
		if _, set := get("usedatanodehostname"); !set {
			p.UseDatanodeHostname = conf["dfs.client.use.datanode.hostname"] == "true"
		}
		if _, set := get("datatransferprotection"); !set {
			p.DataTransferProtection = conf["dfs.data.transfer.protection"]
			if conf["dfs.encrypt.data.transfer"] == "true" {
				p.DataTransferProtection = "privacy"
			}
		}
	}
	if len(p.Namenodes) == 0 {
		return nil, paramError("namenodes", "required: list at least one NameNode host:port (or set hadoopconfdir)")
	}
	if p.User == "" {
		u, err := user.Current()
		if err != nil {
			return nil, paramError("user", "not set and the current user is unknown: %v", err)
		}
		p.User = u.Username
	}
	return p, nil
}

// stringList accepts a YAML list or a comma-separated string.
func stringList(v any) ([]string, error) {
	var raw []string
	switch t := v.(type) {
	case string:
		raw = strings.Split(t, ",")
	case []string:
		raw = t
	case []any:
		for _, e := range t {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("list entries must be strings, got %T", e)
			}
			raw = append(raw, s)
		}
	default:
		return nil, fmt.Errorf("must be a list or a comma-separated string, got %T", v)
	}
	var out []string
	for _, s := range raw {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("must not be empty")
	}
	return out, nil
}

func toInt(v any) (int64, error) {
	switch t := v.(type) {
	case int:
		return int64(t), nil
	case int32:
		return int64(t), nil
	case int64:
		return t, nil
	case uint:
		return int64(t), nil
	case uint64:
		return int64(t), nil
	case float64:
		if t != float64(int64(t)) {
			return 0, fmt.Errorf("not an integer")
		}
		return int64(t), nil
	case string:
		return strconv.ParseInt(strings.TrimSpace(t), 10, 64)
	}
	return 0, fmt.Errorf("not an integer: %T", v)
}

func toDuration(v any) (time.Duration, error) {
	switch t := v.(type) {
	case time.Duration:
		return t, nil
	case string:
		return time.ParseDuration(strings.TrimSpace(t))
	}
	n, err := toInt(v)
	if err != nil {
		return 0, err
	}
	// A number is seconds; beyond ~292 years it would wrap around.
	if n > math.MaxInt64/int64(time.Second) || n < math.MinInt64/int64(time.Second) {
		return 0, fmt.Errorf("%d seconds is out of range", n)
	}
	return time.Duration(n) * time.Second, nil
}
