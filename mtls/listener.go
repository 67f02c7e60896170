package mtls

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// Inbound TLS modes.
const (
	ModeMTLS       = "mtls"       // only mutual TLS: plaintext connections are refused
	ModePermissive = "permissive" // mutual TLS, and plaintext too (for migration); plaintext is counted
	ModeDisabled   = "disabled"   // plaintext only
)

// HandshakeTimeout bounds the time a new connection may take to show its first byte and finish its handshake.
const HandshakeTimeout = 10 * time.Second

// ListenerHooks are told about every connection a Listener refuses or lets through in plaintext; nil fields are
// skipped.
type ListenerHooks struct {
	Failed    func(reason string, remote net.Addr, err error)
	Plaintext func(remote net.Addr)
	// HTTP says that the listener's connections carry HTTP: a client that negotiated ALPN h2 without naming a
	// server (SNI) may be one that offers h2 whatever it then sends, HTTP/1.1 included (Consul's connect package,
	// which Connect-native Go apps use, offers h2 by default on every connection it dials; Consul's built-in
	// proxy, built on it, offers no ALPN in the Consul the tests run, 1.14), so its first bytes are read before Accept and it is
	// handed over as a *SniffedConn that replays them: HTTP/2 only when they are HTTP/2's connection preface.
	// meshlet's own clients name the server, and Envoy speaks what it negotiates.
	HTTP bool
}

// Listener wraps a TCP listener with the inbound TLS mode: each new connection's first byte tells a TLS
// handshake from plaintext; TLS connections are handshaken (the peer verified) before Accept returns them as
// *tls.Conn, so servers see only verified peers; plaintext is passed on in permissive mode and refused in mtls
// mode. Handshakes run in their own goroutines: a slow client never holds up Accept.
type Listener struct {
	inner   net.Listener
	cfg     *tls.Config
	mode    string
	hooks   ListenerHooks
	conns   chan net.Conn
	errs    chan error
	done    chan struct{}
	closeMu sync.Once
	wg      sync.WaitGroup

	mu      sync.Mutex
	pending map[net.Conn]struct{} // connections still handshaking, closed by Close
}

// NewListener starts accepting on inner; mode is ModeMTLS or ModePermissive.
func NewListener(inner net.Listener, cfg *tls.Config, mode string, hooks ListenerHooks) *Listener {
	l := &Listener{inner: inner, cfg: cfg, mode: mode, hooks: hooks,
		conns: make(chan net.Conn), errs: make(chan error), done: make(chan struct{}),
		pending: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.inner.Accept()
		if err != nil {
			select {
			case l.errs <- err:
			case <-l.done:
				return
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		l.wg.Add(1)
		go l.handshake(c)
	}
}

// handshake classifies and (for TLS) handshakes one connection, then hands it to Accept.
func (l *Listener) handshake(c net.Conn) {
	defer l.wg.Done()
	l.mu.Lock()
	select {
	case <-l.done:
		l.mu.Unlock()
		c.Close()
		return
	default:
	}
	l.pending[c] = struct{}{}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.pending, c)
		l.mu.Unlock()
	}()
	c.SetDeadline(time.Now().Add(HandshakeTimeout))
	br := bufio.NewReaderSize(c, 1)
	first, err := br.Peek(1)
	if err != nil {
		c.Close() // gone before saying anything: not a failure worth counting
		return
	}
	pc := &peekedConn{Conn: c, r: br}
	var out net.Conn
	if first[0] == 0x16 { // a TLS handshake record
		tc := tls.Server(pc, l.cfg)
		ctx, cancel := context.WithTimeout(context.Background(), HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			if l.hooks.Failed != nil {
				l.hooks.Failed(Reason(err), c.RemoteAddr(), err)
			}
			c.Close()
			return
		}
		out = tc
		if cs := tc.ConnectionState(); l.hooks.HTTP && cs.NegotiatedProtocol == "h2" && cs.ServerName == "" {
			head, err := readHead(tc)
			if err != nil {
				if !errors.Is(err, io.EOF) && l.hooks.Failed != nil { // gone without a word: nothing to count
					l.hooks.Failed(ReasonOther, c.RemoteAddr(), err)
				}
				c.Close()
				return
			}
			out = &SniffedConn{Conn: tc, head: head}
		}
	} else if l.mode == ModePermissive {
		if l.hooks.Plaintext != nil {
			l.hooks.Plaintext(c.RemoteAddr())
		}
		out = pc
	} else {
		if l.hooks.Failed != nil {
			l.hooks.Failed(ReasonPlaintext, c.RemoteAddr(), errors.New("plaintext connection on an mTLS listener"))
		}
		c.Close()
		return
	}
	c.SetDeadline(time.Time{})
	select {
	case l.conns <- out:
	case <-l.done:
		out.Close()
	}
}

// Accept returns the next verified TLS connection (or, in permissive mode, plaintext one).
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; connections still handshaking are closed. It waits for the goroutines it started.
func (l *Listener) Close() error {
	var err error
	l.closeMu.Do(func() {
		l.mu.Lock()
		close(l.done)
		for c := range l.pending {
			c.Close()
		}
		l.mu.Unlock()
		err = l.inner.Close()
		l.wg.Wait()
	})
	return err
}

// Addr is the listening address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// h2Preface is the start of every HTTP/2 connection.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// readHead reads the first bytes of c: the whole HTTP/2 preface, or as much as tells that it is not one (within
// the handshake's deadline).
func readHead(c net.Conn) ([]byte, error) {
	buf := make([]byte, 0, len(h2Preface))
	for len(buf) < len(h2Preface) && string(buf) == h2Preface[:len(buf)] {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			if len(buf) > 0 && string(buf) != h2Preface[:len(buf)] {
				break // not HTTP/2, and the client said all it had to say: let the server answer it
			}
			return nil, fmt.Errorf("reading the first bytes after the handshake: %w", err)
		}
	}
	return buf, nil
}

// SniffedConn is a mutual TLS connection that negotiated ALPN h2 and whose first bytes the Listener read to tell
// what it carries (ListenerHooks.HTTP): Read replays them first. Its ConnectionState names no application
// protocol, so that a server reads the protocol from the bytes (HTTP/2 by its preface, else HTTP/1.x), and
// NetConn, CloseWrite and the rest are the *tls.Conn's.
type SniffedConn struct {
	*tls.Conn
	head []byte
}

// Read returns the bytes read before Accept first, then the connection's.
func (c *SniffedConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// ConnectionState is the TLS connection's, without the negotiated protocol.
func (c *SniffedConn) ConnectionState() tls.ConnectionState {
	cs := c.Conn.ConnectionState()
	cs.NegotiatedProtocol = ""
	return cs
}

// peekedConn reads through the buffered reader that holds the peeked byte. CloseWrite passes to the TCP conn.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// NetConn returns the wrapped connection (for what its wrappers carry, such as the port a redirected connection
// was made to).
func (c *peekedConn) NetConn() net.Conn { return c.Conn }

// CloseWrite half-closes the underlying connection when it can.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}
