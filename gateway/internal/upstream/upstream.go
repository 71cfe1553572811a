// Package upstream keeps one client per destination service, fed with that
// service's endpoints by discovery and balanced per call (round robin over
// ready endpoints), not per connection.
package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/envgate/envgate/gateway/internal/discovery"
	"github.com/envgate/envgate/gateway/internal/h2client"
)

// ErrNoHealthyUpstream means the destination exists but has no endpoint that
// can take a call.
var ErrNoHealthyUpstream = errors.New("no healthy upstream")

// Endpoints is what the pool needs from discovery.
type Endpoints interface {
	Get(service string) (discovery.Endpoints, bool)
	Subscribe(service string, fn func(eps discovery.Endpoints, exists bool)) (cancel func())
}

// Target is what one client is made for: the endpoint set it draws from,
// and the policy it is reached with (nil: the pool's options, h2c). A set
// reached with two policies has two clients.
type Target struct {
	Set    string
	Policy *Policy
}

// Policy is how a destination is reached, from a DestinationRule or the
// configured defaults. Targets with equal Keys share a client, so a policy
// rebuilt unchanged (a DestinationRule applied again) keeps its
// connections.
type Policy struct {
	Key      string
	TLS      *tls.Config        // nil: h2c
	Balancer *h2client.Balancer // nil: the pool's
	Outlier  *h2client.Outlier  // nil: the pool's
	// MaxRequests, MaxRequestsPerConnection and MaxRetries are the
	// h2client limits of the same names (0: none).
	MaxRequests, MaxRequestsPerConnection, MaxRetries int
}

// clientKey identifies a client: its set and its policy's key.
type clientKey struct{ set, policy string }

func (t Target) key() clientKey {
	if t.Policy == nil {
		return clientKey{set: t.Set}
	}
	return clientKey{t.Set, t.Policy.Key}
}

// Pool hands out the connection of a destination, creating it on first use
// and closing it when discovery removes the service.
type Pool struct {
	eps  Endpoints
	opts h2client.Options
	log  *slog.Logger

	mu    sync.RWMutex // guards conns; taken before a Conn's mu
	conns map[clientKey]*Conn

	goneMu sync.Mutex // guards gone
	gone   []Target
	kick   chan struct{}

	// idle closes a client whose destination saw no call for this long
	// (0: never); retired are the clients taken out for it, closed once
	// nothing can still be using them. Only Run touches retired and the
	// Conns' activity fields.
	idle    time.Duration
	retired []retiredConn
}

// retiredConn is a client out of the pool since at.
type retiredConn struct {
	c  *Conn
	at time.Time
}

// retireGrace is how long a client taken out of the pool stays open for a
// caller that got it just before: such a caller opens its stream at once,
// and the client is closed only once that stream has ended.
const retireGrace = 5 * time.Second

// Conn is one target's client and its current endpoints.
type Conn struct {
	*h2client.Client
	target Target
	cancel func()

	mu     sync.RWMutex
	eps    discovery.Endpoints
	exists bool

	// lastOpened and idleSince track the client's activity for the idle
	// close; only the pool's Run reads and writes them.
	lastOpened uint64
	idleSince  time.Time
}

// NewPool returns a pool whose clients use opts.
func NewPool(eps Endpoints, log *slog.Logger, opts h2client.Options) *Pool {
	if opts.Log == nil {
		opts.Log = log
	}
	return &Pool{eps: eps, log: log, opts: opts, conns: map[clientKey]*Conn{}, kick: make(chan struct{}, 1)}
}

// CloseIdle makes Run close the client of a destination that saw no call
// for d, as Envoy closes upstream connections after idle_timeout; the next
// call opens it again. 0 (the default) never does. Call it before Run.
func (p *Pool) CloseIdle(d time.Duration) { p.idle = d }

// Get returns the connection for t, or an error wrapping
// ErrNoHealthyUpstream when no call can be sent there: its set is unknown to
// discovery, or has no ready endpoint.
func (p *Pool) Get(t Target) (*Conn, error) {
	p.mu.RLock()
	c, ok := p.conns[t.key()]
	p.mu.RUnlock()
	if !ok {
		// Only sets discovery knows get a connection, so requests for
		// unknown ones cost nothing.
		if _, exists := p.eps.Get(t.Set); !exists {
			return nil, fmt.Errorf("%w: %s not found", ErrNoHealthyUpstream, t.Set)
		}
		c = p.create(t)
	}
	c.mu.RLock()
	exists, n := c.exists, len(c.eps)
	c.mu.RUnlock()
	switch {
	case !exists:
		return nil, fmt.Errorf("%w: %s", ErrNoHealthyUpstream, t.Set+" not found")
	case n == 0:
		return nil, ErrNoHealthyUpstream
	}
	return c, nil
}

func (p *Pool) create(t Target) *Conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[t.key()]; ok {
		return c
	}
	opts := p.opts
	if pol := t.Policy; pol != nil {
		opts.TLS = pol.TLS
		if pol.Balancer != nil {
			opts.Balancer = *pol.Balancer
		}
		if pol.Outlier != nil {
			opts.Outlier = *pol.Outlier
		}
		opts.MaxRequests, opts.MaxRequestsPerConnection, opts.MaxRetries = pol.MaxRequests, pol.MaxRequestsPerConnection, pol.MaxRetries
	}
	c := &Conn{target: t, Client: h2client.New(t.Set, opts)}
	c.cancel = p.eps.Subscribe(t.Set, func(eps discovery.Endpoints, exists bool) {
		c.mu.Lock()
		c.eps, c.exists = eps, exists
		c.mu.Unlock()
		c.Update(eps)
		if !exists {
			p.removeLater(t)
		}
	})
	p.conns[t.key()] = c
	return c
}

// removeLater queues t for Run to close: the discovery callback that
// reports the removal may not call back into discovery itself.
func (p *Pool) removeLater(t Target) {
	p.goneMu.Lock()
	p.gone = append(p.gone, t)
	p.goneMu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Len is the number of open connections.
func (p *Pool) Len() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.conns)
}

// Run closes the connections of services that discovery removed, and every
// connection when ctx ends.
func (p *Pool) Run(ctx context.Context) error {
	var sweep <-chan time.Time
	if p.idle > 0 {
		t := time.NewTicker(max(p.idle/4, 10*time.Millisecond))
		defer t.Stop()
		sweep = t.C
	}
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			conns := p.conns
			p.conns = map[clientKey]*Conn{}
			p.mu.Unlock()
			for _, c := range conns {
				c.close()
			}
			for _, r := range p.retired {
				r.c.close()
			}
			return nil
		case now := <-sweep:
			p.closeIdle(now)
			continue
		case <-p.kick:
		}
		p.goneMu.Lock()
		gone := p.gone
		p.gone = nil
		p.goneMu.Unlock()
		for _, t := range gone {
			p.mu.Lock()
			c, ok := p.conns[t.key()]
			if ok {
				c.mu.RLock()
				ok = !c.exists // it may have come back since
				c.mu.RUnlock()
			}
			if ok {
				delete(p.conns, t.key())
			}
			p.mu.Unlock()
			if ok {
				p.log.Info("closed upstream connection of removed service", "service", t.Set)
				c.close()
			}
		}
	}
}

// closeIdle takes out of the pool the clients that opened no stream and
// had none open for p.idle, and closes those taken out earlier that
// nothing uses any more.
func (p *Pool) closeIdle(now time.Time) {
	p.mu.Lock()
	for k, c := range p.conns {
		opened, inFlight := c.Activity()
		if opened != c.lastOpened || inFlight > 0 || c.idleSince.IsZero() {
			c.lastOpened, c.idleSince = opened, now
			continue
		}
		if now.Sub(c.idleSince) >= p.idle {
			delete(p.conns, k)
			p.retired = append(p.retired, retiredConn{c, now})
		}
	}
	p.mu.Unlock()
	kept := p.retired[:0]
	for _, r := range p.retired {
		if _, inFlight := r.c.Activity(); now.Sub(r.at) < retireGrace || inFlight > 0 {
			kept = append(kept, r)
			continue
		}
		p.log.Debug("closed idle upstream client", "service", r.c.target.Set)
		r.c.close()
	}
	clear(p.retired[len(kept):])
	p.retired = kept
}

func (c *Conn) close() {
	c.cancel()
	_ = c.Client.Close()
}
