package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"

	"meshlet.dev/meshlet/metrics"
	"meshlet.dev/meshlet/proxy/h1guard"
	"meshlet.dev/meshlet/redirect"
)

// A connection redirected to the inbound listener (meshlet redirect-traffic) keeps the port its caller dialled:
// the inbound listener reads its original destination and sends it to the app at that port when it is one of
// service.ports, to service.address when it is the app's own port or the inbound listener's, and refuses it
// otherwise (nothing of the app listens there). A connection made to the inbound listener itself (not
// redirected: another sidecar calling it) goes to service.address.

// appPortListener wraps the inbound listener's accepted connections: it refuses those redirected to a port that
// is no app port, and marks those for another app port (appPortConn).
type appPortListener struct {
	net.Listener
	ports   []uint16 // service.ports
	own     []uint16 // service.address's port and the inbound listener's: the default app port
	refused interface{ Inc() }
	log     *refusedLog
}

func (l *appPortListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		dst, err := redirect.OriginalDst(c)
		switch {
		case errors.Is(err, redirect.ErrNotRedirected):
			return c, nil
		case err != nil:
			l.refuse(c, "no original destination", err.Error())
		case slices.Contains(l.own, dst.Port()):
			return c, nil
		case slices.Contains(l.ports, dst.Port()):
			return &appPortConn{carriedConn{c}, dst.Port()}, nil
		default:
			l.refuse(c, "no app port", dst.String()+" is not in service.ports")
		}
	}
}

func (l *appPortListener) refuse(c net.Conn, why, detail string) {
	l.refused.Inc()
	l.log.connection(metrics.Inbound, "inbound", c.RemoteAddr().String(), why, detail)
	c.Close()
}

// appPortConn is an inbound connection redirected to another app port than service.address's.
type appPortConn struct {
	carriedConn
	port uint16
}

// appPortOf finds the app port c was redirected to, through the wrappers above it (the guard, TLS); 0: the
// default (service.address).
func appPortOf(c net.Conn) uint16 {
	for c != nil {
		switch w := c.(type) {
		case *appPortConn:
			return w.port
		case *h1guard.Conn:
			c = w.Conn
		case interface{ NetConn() net.Conn }:
			c = w.NetConn()
		default:
			return 0
		}
	}
	return 0
}

type appPortKey struct{}

// withAppPort is the inbound HTTP server's ConnContext: the guard's, and the connection's app port.
func withAppPort(ctx context.Context, c net.Conn) context.Context {
	ctx = h1guard.ConnContext(ctx, c)
	if port := appPortOf(c); port != 0 {
		ctx = context.WithValue(ctx, appPortKey{}, port)
	}
	return ctx
}

// appPortFrom returns the app port of a request's connection; 0: the default.
func appPortFrom(ctx context.Context) uint16 {
	p, _ := ctx.Value(appPortKey{}).(uint16)
	return p
}

// appPortTargets are the dial targets of the app's other ports (service.ports), made from the app endpoint's
// target for the running config; nil without service.ports. Inbound settings change only on restart.
func (c *cluster) newAppPortTargets(ports []uint16) map[uint16]*dialTarget {
	if len(ports) == 0 {
		return nil
	}
	p := c.endpoints.picker.Load()
	if len(p.endpoints) != 1 {
		return nil
	}
	st, cfg := p.endpoints[0], c.cfg.Load()
	base := c.targetOf(st, cfg)
	out := make(map[uint16]*dialTarget, len(ports))
	for _, port := range ports {
		t := *base
		t.addr = netip.AddrPortFrom(st.ep.Addr.Addr(), port).String()
		t.poolHost = poolHostOf(&t)
		t.poolAddr = t.poolHost + ":80"
		out[port] = &t
	}
	return out
}

// appPortListener wraps the inbound listener ln (see appPortListener); refused counts what it refuses.
func (p *Proxy) appPortListener(ln net.Listener, refused interface{ Inc() }) net.Listener {
	own := []uint16{}
	for _, a := range []string{p.cfg.Service.Address, ln.Addr().String()} {
		if ap, err := netip.ParseAddrPort(a); err == nil {
			own = append(own, ap.Port())
		}
	}
	return &appPortListener{Listener: ln, ports: toPorts(p.cfg.Service.Ports), own: own, refused: refused, log: &p.refusedLog}
}

func toPorts(ports []int) []uint16 {
	out := make([]uint16, 0, len(ports))
	for _, p := range ports {
		out = append(out, uint16(p))
	}
	return out
}
