package h1guard

import (
	"bufio"
	"bytes"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// The HTTP/1.1 guard must read a chunked request body as net/http's server does, or refuse it: a body the guard
// passes must be the body net/http reads (same data, same trailers, same end, so the next request starts at the
// same byte), and a body net/http refuses must be refused by the guard. The guard may refuse what net/http reads
// only for the reasons it documents (strict*). FuzzH1GuardAgreement runs both over the same bytes.

// agreeHead is the request whose body the property test varies; agreeNext follows it on the connection.
const (
	agreeHead = "POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	agreeNext = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
)

// agreeRead is what a reader made of a connection's first two requests.
type agreeRead struct {
	bodyErr  error       // reading the first request's body
	body     []byte      // the first body, when bodyErr is nil
	trailer  http.Header // its trailers
	next     string      // the second request's path, or "" when it could not be read
	refused  bool        // the guard refused the first head (synthetic request)
	strictBy string      // the guard refused the body for one of its strict* reasons
}

// readTwo reads two requests from r as net/http's server does: a 4 KiB buffered reader, ReadRequest, the body to
// its end (trailers included).
func readTwo(r io.Reader) agreeRead {
	var a agreeRead
	br := bufio.NewReaderSize(r, 4096)
	req, err := http.ReadRequest(br)
	if err != nil {
		a.bodyErr = err
		return a
	}
	if req.URL.Path == rejectedPath {
		a.refused = true
		return a
	}
	a.body, a.bodyErr = io.ReadAll(req.Body)
	if a.bodyErr != nil {
		return a
	}
	a.trailer = req.Trailer
	if next, err := http.ReadRequest(br); err == nil {
		a.next = next.URL.Path
	}
	return a
}

// agree checks the property for one input read by the guard in reads of k bytes, and returns what the guard
// read.
func agree(t *testing.T, body []byte, k int) agreeRead {
	t.Helper()
	in := []byte(agreeHead + string(body) + agreeNext)
	goRead := readTwo(bytes.NewReader(in))
	g := &Conn{Conn: &chunkConn{data: in, k: k}, maxHead: 64 << 10}
	gRead := readTwo(g)
	gRead.strictBy = g.brokenWhy
	switch {
	case gRead.refused:
		t.Fatalf("the guard refused the head (%+v)", g.rejected)
	case gRead.bodyErr == nil && goRead.bodyErr != nil:
		t.Fatalf("the guard passed a body net/http refuses (%v): %q", goRead.bodyErr, body)
	case gRead.bodyErr != nil && goRead.bodyErr == nil:
		if !slices.Contains([]string{strictTrailerLF, strictTrailerFold, strictTrailerName, strictChunkSize}, gRead.strictBy) {
			t.Fatalf("the guard refused (%v, why %q) a body net/http reads: %q", gRead.bodyErr, gRead.strictBy, body)
		}
	case gRead.bodyErr == nil:
		if !bytes.Equal(gRead.body, goRead.body) {
			t.Fatalf("bodies differ: guard %q, net/http %q", gRead.body, goRead.body)
		}
		if !maps.EqualFunc(gRead.trailer, goRead.trailer, slices.Equal) {
			t.Fatalf("trailers differ: guard %v, net/http %v", gRead.trailer, goRead.trailer)
		}
		// The guard may refuse the next head where net/http reads one (it is stricter on heads), but a next
		// request it hands on must be the one net/http reads: both ended the body at the same byte.
		if gRead.next != "" && gRead.next != rejectedPath && gRead.next != goRead.next {
			t.Fatalf("the next request: guard %q, net/http %q", gRead.next, goRead.next)
		}
	}
	return gRead
}

// agreeSeeds are chunked bodies on both sides of each rule of net/http's chunked and trailer readers.
func agreeSeeds() []string {
	ext := func(n int) string { return "1;" + strings.Repeat("e", n) + "\r\nx\r\n" }
	return []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;a=b\r\nhello\r\n0;x\r\n\r\n",
		"5 \r\nhello\r\n0\t\r\n\r\n",
		"5;e \r\nhello\r\n0\r\n\r\n",
		"5 ;e\r\nhello\r\n0\r\n\r\n",
		"5\t;e\r\nhello\r\n0\r\n\r\n",
		" 5\r\nhello\r\n0\r\n\r\n",
		"5\nhello\r\n0\r\n\r\n",
		"5\r\nhello\n0\r\n\r\n",
		"5\r\nhelloXX0\r\n\r\n",
		"0000000000000005\r\nhello\r\n0\r\n\r\n",
		"00000000000000005\r\nhello\r\n0\r\n\r\n",
		"4000000000000000\r\n",
		"1;a\x00\x01\x7f\xff\r\nx\r\n0\r\n\r\n",
		"1;a\rb\r\nx\r\n0\r\n\r\n",
		ext(4091) + "0\r\n\r\n", // a 4096-byte chunk line
		ext(4092) + "0\r\n\r\n", // 4097 bytes
		strings.Repeat(ext(3990), 4) + "0\r\n\r\n",
		strings.Repeat(ext(3990), 5) + "0\r\n\r\n",
		strings.Repeat(ext(2000), 8) + "0\r\n\r\n",
		strings.Repeat(ext(2000), 9) + "0\r\n\r\n",
		"0\r\nX-T: v\r\n\r\n",
		"0\r\nX-T: v\r\nX-T: w\r\nX-U:\r\n\r\n",
		"0\r\nX-T: v\nX-U: w\r\n\r\n",
		"0\r\nX-T: v\r\n w\r\n\r\n",
		"0\r\nX-T : v\r\n\r\n",
		"0\r\n: v\r\n\r\n",
		"0\r\n X-T: v\r\n\r\n",
		"0\r\nX T: v\r\n\r\n",
		"0\r\nX-T v\r\n\r\n",
		"0\r\nX-T: a\x01b\r\n\r\n",
		"0\r\nX-T: " + strings.Repeat("t", 4086) + "\r\n\r\n", // a 4096-byte trailer section
		"0\r\nX-T: " + strings.Repeat("t", 4087) + "\r\n\r\n", // 4097 bytes
		"0\r\n\n",
		"0\r\n\r",
		"2\r\n\r\n\r\n0\r\n\r\n",
	}
}

func TestGuardAgreesWithNetHTTP(t *testing.T) {
	for _, body := range agreeSeeds() {
		for _, k := range []int{1, 3, 7, 4096} {
			// The seeds end cleanly: a body the guard reads is followed by the next request, for both.
			if got := agree(t, []byte(body), k); got.bodyErr == nil && got.next != "/next" {
				t.Fatalf("%q: the guard read the next request as %q", body, got.next)
			}
		}
	}
}

// FuzzH1GuardAgreement: for any chunked body, the guard and net/http's reader agree (see above).
func FuzzH1GuardAgreement(f *testing.F) {
	for i, s := range agreeSeeds() {
		f.Add([]byte(s), 1+i%7)
	}
	f.Fuzz(func(t *testing.T, body []byte, k int) {
		if k <= 0 || k > 1<<12 {
			k = 1 + len(body)%13
		}
		agree(t, body, k)
	})
}
