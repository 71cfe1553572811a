package discovery

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"time"
)

// DNSConfig names what to resolve.
type DNSConfig struct {
	// Names maps a store key to the host name to resolve, e.g.
	// "app-service.env1.svc.cluster.local".
	Names map[string]string
	// Port is the service port's name or number. A name is looked up as the
	// SRV record _<port>._tcp.<name>, which Kubernetes publishes for every
	// named port; a number is joined to the A/AAAA addresses.
	Port string
	// Every is how often names are resolved again.
	Every time.Duration
}

// Resolver is the part of *net.Resolver the DNS source uses.
type Resolver interface {
	LookupHost(ctx context.Context, host string) ([]string, error)
	LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error)
}

// DNS resolves each name periodically. With a headless Service the names
// resolve to every ready pod and calls are balanced per pod; with a ClusterIP
// Service they resolve to one virtual IP, and each HTTP/2 connection stays on
// the one pod kube-proxy picked for it.
type DNS struct {
	cfg   DNSConfig
	store *Store
	res   Resolver
	log   *slog.Logger
}

// NewDNS returns a DNS source; Run starts it.
func NewDNS(store *Store, cfg DNSConfig, res Resolver, log *slog.Logger) *DNS {
	return &DNS{cfg: cfg, store: store, res: res, log: log}
}

// Run resolves every name now and then every cfg.Every until ctx ends. A
// failed lookup keeps the last known endpoints, except "no such host", which
// means the service is gone.
func (d *DNS) Run(ctx context.Context) error {
	d.resolveAll(ctx)
	d.store.MarkSynced()
	t := time.NewTicker(d.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.resolveAll(ctx)
		}
	}
}

func (d *DNS) resolveAll(ctx context.Context) {
	for key, name := range d.cfg.Names {
		addrs, err := d.resolve(ctx, name)
		if err != nil {
			if dnsErr, ok := err.(*net.DNSError); ok && dnsErr.IsNotFound {
				d.store.Delete(key)
				continue
			}
			d.log.Warn("dns lookup failed, keeping the last endpoints", "name", name, "error", err)
			continue
		}
		d.store.Set(key, addrs)
	}
}

func (d *DNS) resolve(ctx context.Context, name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := strconv.Atoi(d.cfg.Port); err == nil {
		hosts, err := d.res.LookupHost(ctx, name)
		if err != nil {
			return nil, err
		}
		out := make([]string, len(hosts))
		for i, h := range hosts {
			out[i] = net.JoinHostPort(h, d.cfg.Port)
		}
		return out, nil
	}
	_, srvs, err := d.res.LookupSRV(ctx, d.cfg.Port, "tcp", name)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range srvs {
		hosts, err := d.res.LookupHost(ctx, s.Target)
		if err != nil {
			return nil, err
		}
		for _, h := range hosts {
			out = append(out, net.JoinHostPort(h, strconv.Itoa(int(s.Port))))
		}
	}
	return out, nil
}
