package proxy

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2/hpack"

	"meshlet.dev/meshlet/proxy/proxytest"
)

// TestH2RequestHeadersNotIndexed: meshlet's HTTP/2 client encodes request headers without adding any to the
// HPACK dynamic table (h2EncoderTableSize), so that per-request values (X-Request-Id) do not churn the tables of
// both sides; the endpoint still decodes every field.
func TestH2RequestHeadersNotIndexed(t *testing.T) {
	blocks := make(chan []byte, 8)
	endpoint := proxytest.NewH2CRecorder(t, blocks)
	p, _ := startProxy(t, Config{Service: ServiceConfig{Name: "web"}, Upstreams: []UpstreamConfig{{Name: "api",
		Listen: "127.0.0.1:0", Protocol: ProtocolHTTP2, Endpoints: []string{endpoint.Addr()}}}})
	const calls = 3
	for range calls {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+p.Addrs()["upstream/api"]+"/same/path", nil)
		req.Header.Set("X-App", "the same value every time")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	dec := hpack.NewDecoder(4096, nil)
	for i := range calls {
		var block []byte
		select {
		case block = <-blocks:
		case <-time.After(5 * time.Second):
			t.Fatalf("request %d never reached the endpoint", i)
		}
		added, fromTable, err := hpackRepresentations(block)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if added != 0 || fromTable != 0 {
			t.Errorf("request %d: %d fields added to the dynamic table, %d taken from it; want none", i, added, fromTable)
		}
		fields, err := dec.DecodeFull(block)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		got := map[string]string{}
		for _, f := range fields {
			got[f.Name] = f.Value
		}
		if got[":path"] != "/same/path" || got["x-app"] != "the same value every time" || len(got[strings.ToLower(HeaderRequestID)]) == 0 {
			t.Errorf("request %d: fields %v", i, got)
		}
	}
}

// hpackRepresentations walks an HPACK header block (RFC 7541 section 6) and counts its fields added to the
// decoder's dynamic table (literals with incremental indexing) and those taken from it (indexed fields past the
// 61 of the static table).
func hpackRepresentations(b []byte) (added, fromTable int, err error) {
	var idx uint64
	for len(b) > 0 {
		switch c := b[0]; {
		case c&0x80 != 0: // indexed field
			if idx, b, err = hpackInt(b, 7); err == nil && idx > 61 {
				fromTable++
			}
		case c&0xc0 == 0x40: // literal with incremental indexing
			added++
			if idx, b, err = hpackInt(b, 6); err == nil && idx > 61 {
				fromTable++
			}
			b, err = hpackLiteral(b, idx, err)
		case c&0xe0 == 0x20: // dynamic table size update
			_, b, err = hpackInt(b, 5)
		default: // literal without indexing, or never indexed
			if idx, b, err = hpackInt(b, 4); err == nil && idx > 61 {
				fromTable++
			}
			b, err = hpackLiteral(b, idx, err)
		}
		if err != nil {
			return 0, 0, err
		}
	}
	return added, fromTable, nil
}

var errHPACKTruncated = errors.New("truncated HPACK block")

// hpackInt reads an integer with an n-bit prefix.
func hpackInt(b []byte, n uint) (uint64, []byte, error) {
	if len(b) == 0 {
		return 0, nil, errHPACKTruncated
	}
	mask := byte(1<<n - 1)
	v := uint64(b[0] & mask)
	b = b[1:]
	if v < uint64(mask) {
		return v, b, nil
	}
	for m := uint(0); len(b) > 0 && m < 63; m += 7 {
		c := b[0]
		b = b[1:]
		v += uint64(c&0x7f) << m
		if c&0x80 == 0 {
			return v, b, nil
		}
	}
	return 0, nil, errHPACKTruncated
}

// hpackLiteral skips a literal field's name (when nameIdx is 0: a literal name) and value strings.
func hpackLiteral(b []byte, nameIdx uint64, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	if nameIdx == 0 {
		if b, err = hpackString(b); err != nil {
			return nil, err
		}
	}
	return hpackString(b)
}

func hpackString(b []byte) ([]byte, error) {
	n, rest, err := hpackInt(b, 7)
	if err != nil || uint64(len(rest)) < n {
		return nil, errHPACKTruncated
	}
	return rest[n:], nil
}
