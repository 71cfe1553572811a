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
// and how its connections are secured (nil: h2c). A set reached with two
// TLS settings has two clients. TLS is compared by pointer: callers hand
// the same configuration for the same destination.
type Target struct {
	Set string
	TLS *tls.Config
}

// Pool hands out the connection of a destination, creating it on first use
// and closing it when discovery removes the service.
type Pool struct {
	eps  Endpoints
	opts h2client.Options
	log  *slog.Logger

	mu    sync.RWMutex // guards conns; taken before a Conn's mu
	conns map[Target]*Conn

	goneMu sync.Mutex // guards gone
	gone   []Target
	kick   chan struct{}
}

// Conn is one target's client and its current endpoints.
type Conn struct {
	*h2client.Client
	target Target
	cancel func()

	mu     sync.RWMutex
	eps    discovery.Endpoints
	exists bool
}

// NewPool returns a pool whose clients use opts.
func NewPool(eps Endpoints, log *slog.Logger, opts h2client.Options) *Pool {
	if opts.Log == nil {
		opts.Log = log
	}
	return &Pool{eps: eps, log: log, opts: opts, conns: map[Target]*Conn{}, kick: make(chan struct{}, 1)}
}

// Get returns the connection for t, or an error wrapping
// ErrNoHealthyUpstream when no call can be sent there: its set is unknown to
// discovery, or has no ready endpoint.
func (p *Pool) Get(t Target) (*Conn, error) {
	p.mu.RLock()
	c, ok := p.conns[t]
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
	if c, ok := p.conns[t]; ok {
		return c
	}
	opts := p.opts
	opts.TLS = t.TLS
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
	p.conns[t] = c
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
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			conns := p.conns
			p.conns = map[Target]*Conn{}
			p.mu.Unlock()
			for _, c := range conns {
				c.close()
			}
			return nil
		case <-p.kick:
		}
		p.goneMu.Lock()
		gone := p.gone
		p.gone = nil
		p.goneMu.Unlock()
		for _, t := range gone {
			p.mu.Lock()
			c, ok := p.conns[t]
			if ok {
				c.mu.RLock()
				ok = !c.exists // it may have come back since
				c.mu.RUnlock()
			}
			if ok {
				delete(p.conns, t)
			}
			p.mu.Unlock()
			if ok {
				p.log.Info("closed upstream connection of removed service", "service", t.Set)
				c.close()
			}
		}
	}
}

func (c *Conn) close() {
	c.cancel()
	_ = c.Client.Close()
}
