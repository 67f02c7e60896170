// Package proxytest provides hostile endpoints for tests of meshlet's proxy, the way net/http/httptest provides
// servers: raw TCP servers that break the rules on purpose.
package proxytest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// HeaderBomb is an endpoint that answers every request with a response whose headers are Size bytes (distinct
// header fields of 1 KiB, so that a client that keeps them holds that much memory), then an empty body. It speaks
// HTTP/1.1, or HTTP/2 over cleartext with prior knowledge (H2C). Requests counts the requests it received (and
// began to answer).
type HeaderBomb struct {
	Size     int
	H2C      bool
	Requests atomic.Int64
	// blocks receives, when not nil, each HTTP/2 request's header block as it came on the wire (its HEADERS
	// frame's; NewH2CRecorder).
	blocks chan<- []byte

	ln net.Listener
	wg sync.WaitGroup
	mu sync.Mutex
	cs map[net.Conn]struct{}
}

// NewHeaderBomb starts a HeaderBomb on loopback; it stops when the test ends.
func NewHeaderBomb(t testing.TB, size int, h2c bool) *HeaderBomb {
	t.Helper()
	return start(t, &HeaderBomb{Size: size, H2C: h2c})
}

// NewH2CRecorder starts an HTTP/2 (h2c) endpoint on loopback that answers every request 200 with no body and
// sends the header block of each, as the client encoded it, to blocks (which must have room for every request:
// the endpoint waits on it); it stops when the test ends.
func NewH2CRecorder(t testing.TB, blocks chan<- []byte) *HeaderBomb {
	t.Helper()
	return start(t, &HeaderBomb{H2C: true, blocks: blocks})
}

func start(t testing.TB, b *HeaderBomb) *HeaderBomb {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.ln, b.cs = ln, map[net.Conn]struct{}{}
	b.wg.Go(b.serve)
	t.Cleanup(b.Close)
	return b
}

// Addr is the bomb's ip:port.
func (b *HeaderBomb) Addr() string { return b.ln.Addr().String() }

// Close stops the listener and the open connections, and waits for them.
func (b *HeaderBomb) Close() {
	b.ln.Close()
	b.mu.Lock()
	for c := range b.cs {
		c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

func (b *HeaderBomb) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		b.cs[c] = struct{}{}
		b.mu.Unlock()
		b.wg.Go(func() {
			defer func() {
				c.Close()
				b.mu.Lock()
				delete(b.cs, c)
				b.mu.Unlock()
			}()
			c.SetDeadline(time.Now().Add(time.Minute))
			if b.H2C {
				b.serveH2C(c)
			} else {
				b.serveH1(c)
			}
		})
	}
}

// fields returns the bomb's header fields: 1 KiB values under distinct names, Size bytes in all.
func (b *HeaderBomb) fields() []hpack.HeaderField {
	value := strings.Repeat("x", 1000)
	var out []hpack.HeaderField
	for i := 0; i*1024 < b.Size; i++ {
		out = append(out, hpack.HeaderField{Name: fmt.Sprintf("x-bomb-%06d", i), Value: value})
	}
	return out
}

// serveH1 answers each HTTP/1.1 request on c.
func (b *HeaderBomb) serveH1(c net.Conn) {
	br := bufio.NewReader(c)
	var head bytes.Buffer
	head.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n")
	for _, f := range b.fields() {
		fmt.Fprintf(&head, "%s: %s\r\n", f.Name, f.Value)
	}
	head.WriteString("\r\n")
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		b.Requests.Add(1)
		if _, err := c.Write(head.Bytes()); err != nil {
			return
		}
	}
}

// serveH2C answers each HTTP/2 request on c: a HEADERS frame and CONTINUATION frames carrying the bomb.
func (b *HeaderBomb) serveH2C(c net.Conn) {
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
	for _, f := range b.fields() {
		enc.WriteField(hpack.HeaderField{Name: f.Name, Value: f.Value, Sensitive: true}) // never indexed: literal
	}
	bw := bufio.NewWriter(c)
	fr := http2.NewFramer(bw, c)
	if b.blocks == nil {
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	}
	fr.WriteSettings()
	bw.Flush()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				b.respondH2(fr, f.StreamID, block.Bytes())
			}
		case *http2.HeadersFrame: // recording: the block undecoded (one frame, as requests this small come)
			b.blocks <- bytes.Clone(f.HeaderBlockFragment())
			if f.StreamEnded() {
				b.respondH2(fr, f.StreamID, block.Bytes())
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				b.respondH2(fr, f.StreamID, block.Bytes())
			}
		}
		if err := bw.Flush(); err != nil {
			return
		}
	}
}

// respondH2 writes block as the response headers of stream id, in frames of 16 KiB, and ends the stream.
func (b *HeaderBomb) respondH2(fr *http2.Framer, id uint32, block []byte) {
	b.Requests.Add(1)
	const frame = 16 << 10
	first := block[:min(frame, len(block))]
	rest := block[len(first):]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true,
		EndHeaders: len(rest) == 0}); err != nil {
		return
	}
	for len(rest) > 0 {
		chunk := rest[:min(frame, len(rest))]
		rest = rest[len(chunk):]
		if err := fr.WriteContinuation(id, len(rest) == 0, chunk); err != nil {
			return
		}
	}
}
