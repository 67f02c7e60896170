package proxy

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// TestClassify: what the first bytes of a stream are read as, and when more are needed.
func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"", ""},
		{"G", ""},
		{"GE", ""},
		{"GET", ""},
		{"GET ", DetectHTTP1},
		{"GET /x HTTP/1.1\r\n", DetectHTTP1},
		{"POST / HTTP/1.0\r\n", DetectHTTP1},
		{"OPTIONS * HTTP/1.1\r\n", DetectHTTP1},
		{"CONNECT api:443 HTTP/1.1\r\n", DetectHTTP1},
		{"PATCH ", DetectHTTP1},
		{"P", ""},   // POST, PUT, PATCH or the HTTP/2 preface
		{"PRI", ""}, // the preface so far
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n", ""},
		{h2Preface, DetectHTTP2},
		{h2Preface + "\x00\x00\x12\x04", DetectHTTP2},
		{"PRI * HTTP/1.1\r\n", DetectOpaque},
		{"\x16", ""},
		{"\x16\x03\x01\x02\x00", DetectTLS},
		{"\x16\x01", DetectOpaque},
		{"get / HTTP/1.1\r\n", DetectOpaque}, // methods are case-sensitive
		{"GETX", DetectOpaque},
		{"BREW / HTCPCP/1.0\r\n", DetectOpaque}, // an unknown method is relayed as it came
		{"\x00\x00\x00\x0a", DetectOpaque},
		{"SSH-2.0-OpenSSH\r\n", DetectOpaque},
		{"*1\r\n$4\r\nPING\r\n", DetectOpaque},
	} {
		if got := classify([]byte(tc.in)); got != tc.want {
			t.Errorf("classify(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestDetect: over a real TCP connection, the result and the bytes the rest of the path reads (all of them, the
// consumed ones first), for clients that send at once, in pieces, nothing (server-first), or leave.
func TestDetect(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		name   string
		pieces []string // written with a pause between them; the client then half-closes
		silent bool     // the client sends nothing and stays
		want   string
	}{
		{"http1 at once", []string{"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"}, false, DetectHTTP1},
		{"http1 byte by byte", []string{"P", "U", "T", " /b HTTP/1.1\r\n\r\n"}, false, DetectHTTP1},
		{"h2 preface in two", []string{h2Preface[:10], h2Preface[10:] + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"}, false, DetectHTTP2},
		{"tls", []string{"\x16\x03\x01\x00\x05hello"}, false, DetectTLS},
		{"opaque", []string{"\x00\x01binary"}, false, DetectOpaque},
		{"a prefix, then the end", []string{"GE"}, false, DetectOpaque},
		{"server-first", nil, true, DetectTimeout},
		{"leaves at once", nil, false, DetectClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			server, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer server.Close()
			go func() {
				for _, p := range tc.pieces {
					client.Write([]byte(p))
					time.Sleep(20 * time.Millisecond)
				}
				if !tc.silent {
					client.(*net.TCPConn).CloseWrite()
				}
			}()
			start := time.Now()
			got, c := detect(server, 300*time.Millisecond)
			if got != tc.want {
				t.Fatalf("detect = %q, want %q", got, tc.want)
			}
			if tc.silent && time.Since(start) < 300*time.Millisecond {
				t.Fatalf("gave up after %v, before the detection timeout", time.Since(start))
			}
			if got == DetectClosed {
				return
			}
			if tc.silent { // the stream goes on after the timeout: the deadline is cleared
				go func() {
					client.Write([]byte("late"))
					client.(*net.TCPConn).CloseWrite()
				}()
			}
			var all bytes.Buffer
			if _, err := io.Copy(&all, c); err != nil {
				t.Fatalf("reading on: %v", err)
			}
			want := ""
			for _, p := range tc.pieces {
				want += p
			}
			if tc.silent {
				want = "late"
			}
			if all.String() != want {
				t.Fatalf("read %q, want %q", all.String(), want)
			}
		})
	}
}
