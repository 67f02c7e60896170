package h1guard

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// chunkConn serves data in reads of at most k bytes, then EOF.
type chunkConn struct {
	net.Conn
	data []byte
	k    int
}

func (c *chunkConn) Close() error { return nil }

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(c.k, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// runGuard passes in through a guard in reads of k bytes (net/http's reads are 4 KiB, or 1 byte for its
// background read; p alternates to cover both) and returns what came out, the Rejection and the final error.
func runGuard(in []byte, k, maxHead int) (out []byte, rej *Rejection, err error) {
	out, g, err := runGuardConn(in, k, maxHead)
	return out, g.rejected, err
}

func runGuardConn(in []byte, k, maxHead int) (out []byte, g *Conn, err error) {
	g = &Conn{Conn: &chunkConn{data: in, k: k}, maxHead: maxHead}
	p := make([]byte, 4096)
	for i := 0; i < 1<<20; i++ {
		q := p
		if i%3 == 2 {
			q = p[:1]
		}
		n, e := g.Read(q)
		out = append(out, q[:n]...)
		if e != nil {
			err = e
			break
		}
	}
	return out, g, err
}

func TestGuardPassesValidStreams(t *testing.T) {
	for name, in := range map[string]string{
		"get":                  "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"pipelined":            "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
		"content-length":       "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello\r\n\r\nxyGET /n HTTP/1.1\r\nHost: a\r\n\r\n",
		"chunked":              "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\nA;ext=\"v\"\r\n0123456789\r\n0\r\n\r\nGET /n HTTP/1.1\r\nHost: a\r\n\r\n",
		"chunk body with CRLF": "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n\r\n\r\n\r\n0\r\n\r\n",
		"trailers":             "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n1\r\nx\r\n0\r\nX-T: v\r\nX-U: w\r\n\r\nGET /n HTTP/1.1\r\nHost: a\r\n\r\n",
		"http/1.0":             "GET / HTTP/1.0\r\n\r\n",
		"obs-text value":       "GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xc3\xa9\t x\r\n\r\n",
		"h2 preface":           "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"ctl in extension":     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1;a\x01b\x00\r\nx\r\n0\r\n\r\n",
		"space after size":     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1 \t\r\nx\r\n0;e \r\n\r\n",
		"16 hex digits":        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000001\r\nx\r\n0\r\n\r\n",
		"options star":         "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"empty header value":   "GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n",
	} {
		for k := 1; k <= len(in); k++ {
			out, rej, err := runGuard([]byte(in), k, 1024)
			if rej != nil || !errors.Is(err, io.EOF) || string(out) != in {
				t.Fatalf("%s, reads of %d: Rejection %+v, error %v, out %q", name, k, rej, err, out)
			}
		}
	}
}

func TestGuardRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, in, prefix, reason string
		status                   int
	}{
		{"cl and te", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "", malformedCLAndTE, 400},
		{"te and cl", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-length: 0\r\n\r\n", "", malformedCLAndTE, 400},
		{"two equal cl", "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", "", malformedMultipleCL, 400},
		{"cl sign", "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx", "", malformedCL, 400},
		{"cl empty", "POST / HTTP/1.1\r\nContent-Length: \r\n\r\n", "", malformedCL, 400},
		{"cl huge", "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", "", malformedCL, 400},
		{"te gzip", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "", malformedTE, 501},
		{"two te", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "", malformedTE, 501},
		{"te on 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "", malformedTE, 400},
		{"obs-fold", "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", "", malformedObsFold, 400},
		{"bare lf", "GET / HTTP/1.1\nHost: a\n\n", "", malformedLineEnd, 400},
		{"bare lf end", "GET / HTTP/1.1\r\nHost: a\r\n\n", "", malformedLineEnd, 400},
		{"bare cr", "GET / HTTP/1.1\r\nX-A: a\rb\r\n\r\n", "", malformedLineEnd, 400},
		{"bare cr unterminated", "GET / HTTP/1.1\r\nX-A: a\rbbbb", "", malformedLineEnd, 400},
		{"space in name", "GET / HTTP/1.1\r\nX A: b\r\n\r\n", "", malformedHeaderName, 400},
		{"space before colon", "GET / HTTP/1.1\r\nX-A : b\r\n\r\n", "", malformedHeaderName, 400},
		{"no colon", "GET / HTTP/1.1\r\nX-A\r\n\r\n", "", malformedHeaderName, 400},
		{"empty name", "GET / HTTP/1.1\r\n: b\r\n\r\n", "", malformedHeaderName, 400},
		{"nul in value", "GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n", "", malformedHeaderValue, 400},
		{"del in value", "GET / HTTP/1.1\r\nX-A: a\x7fb\r\n\r\n", "", malformedHeaderValue, 400},
		{"request line", "GET /\r\n\r\n", "", malformedRequestLine, 400},
		{"empty line first", "\r\nGET / HTTP/1.1\r\n\r\n", "", malformedRequestLine, 400},
		{"space in target", "GET /a b HTTP/1.1\r\n\r\n", "", malformedRequestLine, 400},
		{"version", "GET / HTTP/1.2\r\n\r\n", "", malformedVersion, 505},
		{"too large", "GET /" + strings.Repeat("a", 2000) + " HTTP/1.1\r\n\r\n", "", malformedHeadTooLarge, 431},
		{"too large, no end", "GET / HTTP/1.1\r\nX-A: " + strings.Repeat("a", 2000), "", malformedHeadTooLarge, 431},
		{"second request bad", "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
			"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n", malformedCLAndTE, 400},
		{"after a body", "POST /1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nX-A: a\r\n\tb\r\n\r\n",
			"POST /1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", malformedObsFold, 400},
	} {
		for k := 1; k <= len(tc.in); k++ {
			out, rej, err := runGuard([]byte(tc.in), k, 1024)
			want := tc.prefix + "GET " + rejectedPath + " HTTP/1.1\r\nHost: meshlet\r\nConnection: close\r\n\r\n"
			if rej == nil || rej.Reason != tc.reason || rej.Status != tc.status || string(out) != want || !errors.Is(err, io.EOF) {
				t.Fatalf("%s, reads of %d: Rejection %+v, error %v, out %q", tc.name, k, rej, err, out)
			}
		}
	}
}

func TestGuardBrokenChunkedBody(t *testing.T) {
	head := "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	for name, body := range map[string]string{
		"not hex":                  "zz\r\nhi\r\n0\r\n\r\n",
		"no digits":                ";ext\r\n",
		"size of 2^62":             "4000000000000000\r\n",
		"bare lf":                  "2\nhi\r\n0\r\n\r\n",
		"data overrun":             "2\r\nhiXX\r\n",
		"bare cr":                  "2\rhi",
		"trailer bad name":         "0\r\nX Y: z\r\n\r\n",
		"trailer fold":             "0\r\nX-Y: z\r\n  w\r\n\r\n",
		"long chunk line":          "1;" + strings.Repeat("e", 5000) + "\r\n",
		"chunk line of 4097 bytes": "1;" + strings.Repeat("e", 4093) + "\r\nx\r\n0\r\n\r\n",
		"space before extension":   "2 ;e\r\nhi\r\n0\r\n\r\n",
		"tab before extension":     "2\t;e\r\nhi\r\n0\r\n\r\n",
		"17 hex digits":            "00000000000000001\r\nx\r\n0\r\n\r\n",
		"space inside size":        "1 0\r\n",
		"overhead over 16 KiB": strings.Repeat("1;"+strings.Repeat("e", 4000)+"\r\nx\r\n", 5) +
			"0\r\n\r\n",
		"trailers over 4 KiB": "0\r\nX-A: " + strings.Repeat("t", 4088) + "\r\n\r\n",
	} {
		for k := 1; k <= len(head)+len(body); k++ {
			out, g, err := runGuardConn([]byte(head+body), k, 1024)
			if g.rejected != nil || !g.broken || !errors.Is(err, ErrMalformedBody) {
				t.Fatalf("%s, reads of %d: Rejection %+v, error %v", name, k, g.rejected, err)
			}
			if !bytes.HasPrefix([]byte(head+body), out) {
				t.Fatalf("%s, reads of %d: out %q is not a prefix of the input", name, k, out)
			}
		}
	}
}

// FuzzH1Guard: whatever the bytes and however they are split, the guard either hands on exactly what it read or
// a prefix of it followed by the synthetic request (refused head) or an error (broken body), and never panics.
func FuzzH1Guard(f *testing.F) {
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: y\r\n\r\nGET / HTTP/1.1\r\n\r\n"), 3)
	f.Add([]byte("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"), 7)
	f.Add([]byte("GET / HTTP/1.1\r\nUpgrade: x\r\n\r\n\x00\x01"), 1)
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 5)
	f.Fuzz(func(t *testing.T, in []byte, k int) {
		if k <= 0 || k > 1<<12 {
			k = 1 + len(in)%13
		}
		out, g, err := runGuardConn(in, k, 512)
		rej := g.rejected
		if rej != nil && g.broken {
			t.Fatal("both a refused head and a broken body")
		}
		synthetic := "GET " + rejectedPath + " HTTP/1.1\r\nHost: meshlet\r\nConnection: close\r\n\r\n"
		switch {
		case rej == nil && !g.broken:
			// All of it, or all but a head that the connection's end cut short.
			cut := g.state == gHead && g.buffered() && len(out)+len(*g.in) == len(in)
			if !bytes.HasPrefix(in, out) || len(out) < len(in) && !cut || !errors.Is(err, io.EOF) {
				t.Fatalf("passed %q with %v, want all of %q", out, err, in)
			}
		case g.broken:
			if !errors.Is(err, ErrMalformedBody) || !bytes.HasPrefix(in, out) {
				t.Fatalf("broken body: out %q is not a prefix of %q", out, in)
			}
		default:
			if !bytes.HasSuffix(out, []byte(synthetic)) || !bytes.HasPrefix(in, out[:len(out)-len(synthetic)]) {
				t.Fatalf("refused (%s): out %q", rej.Reason, out)
			}
		}
	})
}

// TestGuardHeadMemory: a head's buffer grows to max_header_bytes plus one read at most (it doubled past it before),
// and the heads of all connections together stay within their budget: a head that would pass it is refused with
// 503 (header_budget), and closing the connections gives every byte back.
func TestGuardHeadMemory(t *testing.T) {
	const maxHead = 64 << 10
	long := "GET / HTTP/1.1\r\nHost: a\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 1000)+"\r\n", 60)
	t.Run("one head", func(t *testing.T) {
		g := &Conn{Conn: &chunkConn{data: []byte(long), k: 4096}, maxHead: maxHead}
		p := make([]byte, 4096)
		for {
			if _, err := g.Read(p); err != nil {
				break
			}
		}
		if g.in == nil || cap(*g.in) > maxHead+ReadChunk {
			t.Fatalf("buffer of an unfinished %d-byte head: %v, want at most %d", len(long), g.in, maxHead+ReadChunk)
		}
	})
	t.Run("budget", func(t *testing.T) {
		b := NewBudget(4 * (maxHead + ReadChunk))
		var conns []*Conn
		refused := 0
		for range 10 {
			g := &Conn{Conn: &chunkConn{data: []byte(long), k: 4096}, maxHead: maxHead, budget: b}
			conns = append(conns, g)
			out, err := readAll(g)
			if g.rejected != nil {
				if g.rejected.Reason != refusedHeadBudget || g.rejected.Status != 503 ||
					!strings.HasSuffix(string(out), rejectedLine+"\r\nHost: meshlet\r\nConnection: close\r\n\r\n") {
					t.Fatalf("refusal %+v, out %q, err %v", g.rejected, out, err)
				}
				refused++
			}
			if used := b.used.Load(); used > b.limit {
				t.Fatalf("budget used %d, limit %d", used, b.limit)
			}
		}
		if refused < 5 || refused == 10 {
			t.Fatalf("%d of 10 heads refused, want those the budget cannot hold (about 6)", refused)
		}
		for _, g := range conns {
			g.Close()
		}
		if used := b.used.Load(); used != 0 {
			t.Fatalf("after closing every connection the budget still holds %d bytes", used)
		}
	})
}

// readAll reads g until its first error.
func readAll(g *Conn) ([]byte, error) {
	var out []byte
	p := make([]byte, 4096)
	for {
		n, err := g.Read(p)
		out = append(out, p[:n]...)
		if err != nil {
			return out, err
		}
	}
}

// Unread's bytes come back first, before what the guard holds or reads next, and the requests after them are
// checked as before: a reader that hands the connection over loses nothing and lets nothing through unchecked.
func TestGuardUnread(t *testing.T) {
	in := "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"
	g := &Conn{Conn: &chunkConn{data: []byte(in), k: 7}, maxHead: 64 << 10}
	br := bufio.NewReader(g)
	first, err := br.Peek(len("GET /a HTTP/1.1\r\nHost: a\r\n\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	g.Unread(bytes.Clone(first[:10]))
	g.Unread(bytes.Clone(first[:5])) // given back in front of the first
	var got bytes.Buffer
	buf := make([]byte, 3)
	for range 5 {
		n, _ := g.Read(buf)
		got.Write(buf[:n])
	}
	if want := string(first[:5]) + string(first[:10]); got.String() != want {
		t.Fatalf("after Unread the reads gave %q, want %q", got.String(), want)
	}
	req, err := http.ReadRequest(bufio.NewReader(g)) // the rest of /a's head was br's: next is /b's
	if err != nil {
		t.Fatal(err)
	}
	if req.URL.Path != rejectedPath {
		t.Errorf("the request after the given-back bytes is %q, want the guard's refusal (two Content-Lengths)", req.URL.Path)
	}
}
