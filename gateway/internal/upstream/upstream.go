// Package upstream keeps one client per destination service, fed with that
// service's endpoints by discovery and balanced per call (round robin over
// ready endpoints), not per connection.
package upstream

import (
	"context"
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

// Pool hands out the connection of a destination, creating it on first use
// and closing it when discovery removes the service.
type Pool struct {
	eps  Endpoints
	opts h2client.Options
	log  *slog.Logger

	mu    sync.RWMutex
	conns map[string]*Conn

	goneMu sync.Mutex
	gone   []string
	kick   chan struct{}
}

// Conn is one destination's client and its current endpoints.
type Conn struct {
	*h2client.Client
	service string
	cancel  func()

	mu     sync.RWMutex
	eps    discovery.Endpoints
	exists bool
}

// NewPool returns a pool whose clients use opts.
func NewPool(eps Endpoints, log *slog.Logger, opts h2client.Options) *Pool {
	if opts.Log == nil {
		opts.Log = log
	}
	return &Pool{eps: eps, log: log, opts: opts, conns: map[string]*Conn{}, kick: make(chan struct{}, 1)}
}

// Get returns the connection for service, or an error wrapping
// ErrNoHealthyUpstream when no call can be sent there: the service is unknown
// to discovery, or has no ready endpoint.
func (p *Pool) Get(service string) (*Conn, error) {
	p.mu.RLock()
	c, ok := p.conns[service]
	p.mu.RUnlock()
	if !ok {
		// Only services discovery knows get a connection, so requests for
		// unknown ones cost nothing.
		if _, exists := p.eps.Get(service); !exists {
			return nil, fmt.Errorf("%w: %s not found", ErrNoHealthyUpstream, service)
		}
		var err error
		if c, err = p.create(service); err != nil {
			return nil, err
		}
	}
	c.mu.RLock()
	exists, n := c.exists, len(c.eps)
	c.mu.RUnlock()
	switch {
	case !exists:
		return nil, fmt.Errorf("%w: %s", ErrNoHealthyUpstream, service+" not found")
	case n == 0:
		return nil, ErrNoHealthyUpstream
	}
	return c, nil
}

func (p *Pool) create(service string) (*Conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.conns[service]; ok {
		return c, nil
	}
	c := &Conn{service: service, Client: h2client.New(service, p.opts)}
	c.cancel = p.eps.Subscribe(service, func(eps discovery.Endpoints, exists bool) {
		c.mu.Lock()
		c.eps, c.exists = eps, exists
		c.mu.Unlock()
		c.Update(eps)
		if !exists {
			p.removeLater(service)
		}
	})
	p.conns[service] = c
	return c, nil
}

// removeLater queues service for Run to close: the discovery callback that
// reports the removal may not call back into discovery itself.
func (p *Pool) removeLater(service string) {
	p.goneMu.Lock()
	p.gone = append(p.gone, service)
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
			p.conns = map[string]*Conn{}
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
		for _, svc := range gone {
			p.mu.Lock()
			c, ok := p.conns[svc]
			if ok {
				c.mu.RLock()
				ok = !c.exists // it may have come back since
				c.mu.RUnlock()
			}
			if ok {
				delete(p.conns, svc)
			}
			p.mu.Unlock()
			if ok {
				p.log.Info("closed upstream connection of removed service", "service", svc)
				c.close()
			}
		}
	}
}

func (c *Conn) close() {
	c.cancel()
	_ = c.Client.Close()
}
