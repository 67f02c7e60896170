package e2e_test

// Request smuggling through the HTTP/1.1 guard (issue 11, items 1 to 3), against real meshlet processes: bytes the
// guard and net/http read differently (a chunked body net/http refuses but the guard passed, a request the guard
// took for an upgrade or for the HTTP/2 preface) must never let a request the guard did not check reach the app.
// Each case is sent on one connection to the plaintext inbound and outbound listeners and to an inbound listener
// over mutual TLS (ALPN http/1.1); the app must never see the smuggled request, and meshlet must close the
// connection.

import (
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"meshlet.dev/meshlet/internal/meshlettest"
)

// smuggleTarget is one HTTP/1.1 listener of a real meshlet in front of an app that records the paths it sees.
type smuggleTarget struct {
	name string
	dial func() (net.Conn, error)
	saw  func(path string) int
}

// startSmuggleTargets starts a plaintext meshlet (inbound and outbound listeners) and a mutual TLS one.
func startSmuggleTargets(t *testing.T) []smuggleTarget {
	t.Helper()
	ht := startHostileTarget(t)
	plainSaw := func(path string) int {
		if ht.sawPath(path) {
			return 1
		}
		return 0
	}
	dir := mtlsCerts(t, "api", "web")
	app := mtlsStartApp(t, "api")
	a := meshlettest.FreeAddrs(t, 1)
	mtlsStart(t, mtlsSidecar{name: "api", app: app.addr, inbound: a[0], mode: "mtls", certDir: dir, cert: "api"})
	clientTLS := mtlsClientTLS(t, dir, "web", "http/1.1")
	var out []smuggleTarget
	for _, ln := range []string{"inbound", "outbound"} {
		addr := ht.listeners[ln]
		out = append(out, smuggleTarget{name: ln, saw: plainSaw,
			dial: func() (net.Conn, error) { return net.DialTimeout("tcp", addr, 5*time.Second) }})
	}
	out = append(out, smuggleTarget{name: "mtls", saw: app.saw, dial: func() (net.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", a[0], clientTLS)
	}})
	return out
}

// smuggleExchange writes payload on a new connection, reads every response until meshlet closes the connection,
// and returns their statuses, and whether the connection was still open at the deadline.
func smuggleExchange(t *testing.T, tg smuggleTarget, payload string) (statuses []int, open bool) {
	t.Helper()
	c, err := tg.dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	answers, _, err := meshlettest.Answers(c, payload, 10)
	for _, a := range answers {
		statuses = append(statuses, a.StatusCode)
	}
	if err == nil {
		t.Fatalf("more than 10 answers on one connection: %v", statuses)
	}
	return statuses, meshlettest.IsTimeout(err)
}

// smuggled is a request for path that the guard never checked, if it reaches net/http as one: Content-Length with
// Transfer-Encoding, which net/http would forward as chunked.
func smuggled(path string) string {
	return "POST " + path + " HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
}

// chunkedWith returns a chunked POST whose last chunk-size line is sizeLine (hex size and extensions), with the
// smuggled request as that chunk's data: a reader that refuses the line and keeps reading the connection takes
// the data for the next request.
func chunkedWith(smuggledRequest string, prefixChunks []string, sizeLineFmt string) string {
	var b strings.Builder
	b.WriteString("POST /first HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n")
	for _, c := range prefixChunks {
		b.WriteString(c)
	}
	fmt.Fprintf(&b, sizeLineFmt, len(smuggledRequest))
	b.WriteString("\r\n" + smuggledRequest + "\r\n0\r\n\r\n")
	return b.String()
}

func TestSmugglingThroughGuard(t *testing.T) {
	targets := startSmuggleTargets(t)
	// Chunks whose extensions add up to more than net/http's 16 KiB of non-data overhead, every line valid.
	var heavy []string
	for range 4 {
		heavy = append(heavy, "1;"+strings.Repeat("a", 3998)+"\r\nX\r\n")
	}
	for i, tc := range []struct {
		name    string
		payload func(smuggled string) string
	}{
		{"space before chunk extension", func(s string) string { return chunkedWith(s, nil, "%x ;ext") }},
		{"tab before chunk extension", func(s string) string { return chunkedWith(s, nil, "%x\t;ext") }},
		{"chunk extensions over 16 KiB of overhead", func(s string) string {
			return chunkedWith(s, heavy, "%x;"+strings.Repeat("b", 3990))
		}},
		{"empty Upgrade header", func(s string) string {
			return "GET /up HTTP/1.1\r\nHost: api\r\nUpgrade:\r\n\r\n" + s
		}},
		{"Upgrade with a gRPC content type", func(s string) string {
			return "POST /up HTTP/1.1\r\nHost: api\r\nUpgrade: x\r\nContent-Type: application/grpc\r\nContent-Length: 0\r\n\r\n" + s
		}},
		{"Upgrade without Connection: upgrade", func(s string) string {
			return "GET /up HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\n\r\n" + s
		}},
		{"HTTP/2 preface after a request", func(s string) string {
			return "GET /first HTTP/1.1\r\nHost: api\r\n\r\nPRI * HTTP/2.0\r\n\r\n" + s
		}},
		{"HTTP/2 request line without the preface", func(s string) string { return "PRI * HTTP/2.0\r\n\r\n" + s }},
	} {
		for _, tg := range targets {
			t.Run(tc.name+"/"+tg.name, func(t *testing.T) {
				path := fmt.Sprintf("/smuggled-%d-%s", i, tg.name)
				statuses, open := smuggleExchange(t, tg, tc.payload(smuggled(path)))
				if tg.saw(path) != 0 {
					t.Fatalf("the app received the smuggled request (answers %v)", statuses)
				}
				if len(statuses) == 0 {
					t.Error("no answer at all")
				}
				if open {
					t.Errorf("connection still open after the answers %v", statuses)
				}
			})
		}
	}
}
