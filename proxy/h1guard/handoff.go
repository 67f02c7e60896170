package h1guard

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"net/http"
)

// What the handlers of an HTTP listener ask of the HTTP/1.1 guard of their request's connection (guard.go), and
// what they tell it: which request net/http handed over, how its body ended, and a protocol switch.

type guardKey struct{}

// ConnContext is the listener's ConnContext: it lets handlers find the guard of their connection.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(*Conn); ok {
		return context.WithValue(ctx, guardKey{}, g)
	}
	return ctx
}

// Of returns the guard of the connection a request came on, or nil.
func Of(r *http.Request) *Conn {
	g, _ := r.Context().Value(guardKey{}).(*Conn)
	return g
}

// TLSState returns the TLS state of the connection r came on: net/http's, or the guard's for a guarded mutual
// TLS connection; nil for plaintext.
func TLSState(r *http.Request) *tls.ConnectionState {
	if r.TLS != nil {
		return r.TLS
	}
	if g := Of(r); g != nil {
		return g.tls
	}
	return nil
}

// admit reports whether r is the request whose head the guard checked next on this connection: same place in the
// sequence, same request line. Any other request is one net/http read where the guard saw something else (a body
// net/http stopped reading part-way, bytes of a body merged into a head): the handler refuses it and closes the
// connection. HTTP/2 requests (prior knowledge, which the guard lets through whole) are not counted.
func (g *Conn) Admit(r *http.Request) bool {
	if r.ProtoMajor != 1 {
		return true
	}
	n := g.served.Add(1)
	heads := g.heads.Load()
	if n > heads || heads-n >= uint64(len(g.lines)) {
		return false
	}
	h := fnvAdd(fnvOffset, r.Method)
	h = fnvAdd(h, " ")
	h = fnvAdd(h, r.RequestURI)
	h = fnvAdd(h, " ")
	h = fnvAdd(h, r.Proto)
	return g.lines[(n-1)%uint64(len(g.lines))].Load() == h
}

// Rejection returns why the guard refused the request r stands for, or nil when r is a real request.
func (g *Conn) Rejection(r *http.Request) *Rejection {
	if r.URL.Path != rejectedPath {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.rejected
}

// BrokenBody reports, once, that a request body on this connection broke its chunked framing.
func (g *Conn) BrokenBody() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	b := g.broken
	g.broken = false
	return b
}

// Unread gives back bytes a reader took from the connection and did not use (they were checked already): the
// next reads return them first. For a reader that hands the connection over to another (net/http's server).
// Call it when no Read is under way.
func (g *Conn) Unread(b []byte) {
	if len(b) > 0 {
		g.unread = append(b, g.unread...)
	}
}

// Held reports how many bytes the guard has read from the connection and not yet handed on: the next reads
// return them without reading the connection (the rest of a request body, or the start of the next head, that
// came with a head). Call it when no Read is under way.
func (g *Conn) Held() int {
	n := len(g.unread)
	if g.in != nil {
		n += len(*g.in)
	}
	return n
}

// BodyFailed tells the guard that a request body ended in an error (net/http's reader or a read deadline): the
// connection reads nothing more, so net/http closes it instead of reading a next request from where its reader
// stopped.
func (g *Conn) BodyFailed() { g.dead.Store(true) }

// switched tells the guard that the handler took the connection over for a protocol switch (a 101 answer): the
// bytes that follow are no longer HTTP/1.1 and pass unchecked. A connection with a request body still coming, or
// one the guard already refused, is closed instead. Called after net/http's Hijack, when no Read is under way.
func (g *Conn) switched() {
	if g.inBody.Load() || g.state == gRejected || g.state == gFailed {
		g.dead.Store(true)
		return
	}
	g.state = gOpaque
}

// UpgradeWriter returns the response writer of an upgrade request on g's connection (upgradeWriter).
func (g *Conn) UpgradeWriter(w http.ResponseWriter) http.ResponseWriter {
	return &upgradeWriter{ResponseWriter: w, g: g}
}

// upgradeWriter is the response writer of an upgrade request on a guarded connection. An answer other than 101
// closes the connection (Connection: close); a 101 makes the reverse proxy hijack the connection, and only then
// does the guard stop checking it.
type upgradeWriter struct {
	http.ResponseWriter
	g     *Conn
	wrote bool
}

func (w *upgradeWriter) WriteHeader(code int) {
	if code != http.StatusSwitchingProtocols && code >= 200 && !w.wrote {
		w.Header().Set("Connection", "close")
	}
	if code >= 200 {
		w.wrote = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *upgradeWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Hijack takes the connection over from net/http (http.ResponseController finds it) and tells the guard.
func (w *upgradeWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.g.switched()
	}
	return c, brw, err
}

// Unwrap returns the server's writer.
func (w *upgradeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Drained reports whether a read would go straight to the socket: the connection passes its bytes through
// unchecked (HTTP/2 after its preface) and holds none of them. Its reader may then wait for the socket to become
// readable without a buffer of its own.
func (g *Conn) Drained() bool {
	return g.state == gOpaque && len(g.unread) == 0 && g.out == 0 && !g.buffered() && g.err == nil && !g.dead.Load()
}
