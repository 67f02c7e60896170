package proxy

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Headers reads header blocks as x/net's Framer does with ReadMetaHeaders: the same frames (from the fuzzer's
// bytes: header blocks of fields valid and not, raw HPACK bytes, split across CONTINUATION frames, interleaved
// with other frames) give the same frames, fields and errors, under the same header list limit.
func FuzzH2HeadersAgreement(f *testing.F) {
	for _, seed := range [][]byte{
		{0, 0, 1}, {0, 1, 1}, {0, 2, 0, 3}, {1, 3, 0}, {0, 4, 1}, {0, 5, 1}, {0, 6, 1}, {0, 7, 1}, {2, 0},
		{0, 8, 2, 0, 9, 1}, {3, 0xff, 0xff, 1}, {0, 10, 1}, {0, 11, 1}, {4, 0, 0, 1}, {0, 12, 1},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 300 {
			return
		}
		wire := h2HeaderFrames(in)
		for _, limit := range []uint32{0, 100, 4096} {
			want := readH2FramesXNet(wire, limit)
			got := readH2FramesOwn(wire, limit)
			if want != got {
				t.Fatalf("limit %d, input %q:\nx/net:      %s\nh2Headers: %s", limit, in, want, got)
			}
		}
	})
}

// h2HeaderFieldSets are the fields a block may carry.
var h2HeaderFieldSets = [][][2]string{
	{{":method", "GET"}, {":path", "/"}, {":scheme", "http"}, {":authority", "a"}},
	{{":status", "200"}, {"content-type", "text/plain"}},
	{{":status", "200"}, {":method", "GET"}},
	{{":status", "200"}, {":status", "204"}},
	{{":bogus", "1"}},
	{{"x-a", "1"}, {":status", "200"}},
	{{"Upper", "1"}},
	{{"x-v", "a\x00b"}},
	{{"x-long", strings.Repeat("v", 300)}},
	{{"trailer", "a, b, c"}, {"x", "y"}},
	{{"grpc-status", "0"}},
	{{"bad name", "1"}},
	{{":status", "200"}, {"trailer", strings.Repeat("t,", 80)}},
}

// h2HeaderFrames turns in into frames: header blocks (split or not, ended or not), raw HPACK, other frames.
func h2HeaderFrames(in []byte) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.AllowIllegalWrites = true
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	arg := func() byte { return nextFuzzByte(&in) }
	for n := 0; len(in) > 0 && n < 20; n++ {
		switch arg() % 5 {
		case 0, 1: // a block of a field set, maybe split; maybe without its end
			set, flags := arg(), arg()
			hbuf.Reset()
			for _, fl := range h2HeaderFieldSets[int(set)%len(h2HeaderFieldSets)] {
				enc.WriteField(hpack.HeaderField{Name: fl[0], Value: fl[1]})
			}
			b := bytes.Clone(hbuf.Bytes())
			id := uint32(1 + 2*(flags>>4))
			if flags&1 != 0 && len(b) > 1 {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b[:len(b)/2]})
				if flags&2 == 0 {
					fr.WriteContinuation(id, true, b[len(b)/2:])
				}
			} else {
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: b, EndHeaders: true, EndStream: flags&4 != 0})
			}
		case 2: // another frame
			fr.WritePing(false, [8]byte{})
		case 3: // raw HPACK bytes
			k := int(arg()) % 8
			raw := make([]byte, 0, k)
			for range k {
				raw = append(raw, arg())
			}
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: raw, EndHeaders: arg()%2 == 0})
		case 4: // a CONTINUATION of its own
			fr.WriteContinuation(1, arg()%2 == 0, []byte{0x82})
		}
	}
	return buf.Bytes()
}

func describeH2Frames(read func() (http2.Frame, error)) string {
	var b strings.Builder
	for range 50 {
		f, err := read()
		if err != nil {
			var se http2.StreamError
			if errorsAsStreamError(err, &se) {
				fmt.Fprintf(&b, "stream error %d %v %v; ", se.StreamID, se.Code, se.Cause)
				continue
			}
			fmt.Fprintf(&b, "error %T %v", err, err)
			return b.String()
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			fmt.Fprintf(&b, "headers %d end=%v truncated=%v %v; ", f.StreamID, f.StreamEnded(), f.Truncated, f.Fields)
		default:
			fmt.Fprintf(&b, "%v; ", f.Header().Type)
		}
	}
	return b.String()
}

func errorsAsStreamError(err error, se *http2.StreamError) bool {
	s, ok := err.(http2.StreamError)
	if ok {
		*se = s
	}
	return ok
}

func readH2FramesXNet(wire []byte, limit uint32) string {
	fr := http2.NewFramer(nil, bytes.NewReader(wire))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = limit
	return describeH2Frames(fr.ReadFrame)
}

func readH2FramesOwn(wire []byte, limit uint32) string {
	fr := http2.NewFramer(nil, bytes.NewReader(wire))
	h := newH2Headers(hpack.NewDecoder(4096, nil), limit)
	return describeH2Frames(func() (http2.Frame, error) { return h.readFrame(fr) })
}
