package grpcwire

import (
	"net/url"
	"strconv"
	"testing"
	"time"
)

// FuzzParseTimeout checks that ParseTimeout never panics, accepts only well-formed values (1-8 digits and a
// unit) with a non-negative result, and that a parsed value rendered again parses to the same duration.
func FuzzParseTimeout(f *testing.F) {
	for _, s := range []string{"1n", "100m", "5S", "1H", "99999999H", "99999999M", "00000001u", "", "1", "S",
		"-1S", "+1S", "1s", "1.5S", "123456789S", "1 S", "0n", "1x", "9223372036854775807n", "\xff1S", "1Sm"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		d, ok := ParseTimeout(v)
		if !ok {
			if d != 0 {
				t.Fatalf("ParseTimeout(%q) = %v, false: a refused value must give 0", v, d)
			}
			return
		}
		if d < 0 {
			t.Fatalf("ParseTimeout(%q) = %v: negative", v, d)
		}
		if len(v) < 2 || len(v) > 9 {
			t.Fatalf("ParseTimeout(%q) accepted a value of %d bytes (the spec allows 1-8 digits and a unit)", v, len(v))
		}
		for _, c := range v[:len(v)-1] {
			if c < '0' || c > '9' {
				t.Fatalf("ParseTimeout(%q) accepted a non-digit %q", v, c)
			}
		}
	})
}

// FuzzEncodeMessage checks that EncodeMessage writes only printable ASCII and that percent-decoding gives the
// message back byte for byte, whatever the bytes (invalid UTF-8, control characters, '%').
func FuzzEncodeMessage(f *testing.F) {
	for _, s := range []string{"", "plain", "100%", "%41", "a\r\nb", "\x00\x7f\xff", "héllo ☃", "meshlet: no upstream named \"x\"",
		"%", "%%", "+ +", "\t"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, msg string) {
		enc := EncodeMessage(msg)
		for i := 0; i < len(enc); i++ {
			if c := enc[i]; c < ' ' || c > '~' {
				t.Fatalf("EncodeMessage(%q) = %q: byte %#x is not printable ASCII", msg, enc, c)
			}
		}
		dec, err := url.PathUnescape(enc)
		if err != nil {
			t.Fatalf("EncodeMessage(%q) = %q: PathUnescape: %v", msg, enc, err)
		}
		if dec != msg {
			t.Fatalf("EncodeMessage(%q) = %q decodes to %q", msg, enc, dec)
		}
		if dec := DecodeMessage(enc); dec != msg {
			t.Fatalf("EncodeMessage(%q) = %q: DecodeMessage gives %q", msg, enc, dec)
		}
	})
}

// specParseGRPCTimeout parses a grpc-timeout value as the gRPC over HTTP/2 spec defines it
// (TimeoutValue: 1-8 ASCII digits; TimeoutUnit: H M S m u n), independently of the proxy's parser.
func specParseGRPCTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	digits := v[:len(v)-1]
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		return 0, false
	}
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second, 'm': time.Millisecond,
		'u': time.Microsecond, 'n': time.Nanosecond}
	unit, ok := units[v[len(v)-1]]
	if !ok {
		return 0, false
	}
	if n > int64((1<<63-1)/unit) {
		return 1<<63 - 1, true
	}
	return time.Duration(n) * unit, true
}

// FuzzTimeoutRoundTrip checks that EncodeTimeout always writes a value the spec allows and that it never
// asks for less time than the caller has: parse(encode(d)) >= d.
func FuzzTimeoutRoundTrip(f *testing.F) {
	for _, d := range []int64{0, -1, 1, 999, 1000, 1001, 99999999, 100000000, 100000001, 99999999999,
		int64(time.Second), int64(99999999 * time.Microsecond), int64(99999999*time.Microsecond) + 1,
		int64(99999999*time.Millisecond) + 1, int64(99999999*time.Second) + 1, int64(99999999 * time.Minute),
		int64(99999999*time.Minute) + 1, 1<<63 - 1, -1 << 63} {
		f.Add(d)
	}
	f.Fuzz(func(t *testing.T, n int64) {
		d := time.Duration(n)
		enc := EncodeTimeout(d)
		got, ok := specParseGRPCTimeout(enc)
		if !ok {
			t.Fatalf("EncodeTimeout(%v) = %q: not a valid grpc-timeout", d, enc)
		}
		if d > 0 && got < d {
			t.Fatalf("EncodeTimeout(%v) = %q = %v: shorter than the caller's deadline", d, enc, got)
		}
		if d <= 0 && got <= 0 {
			t.Fatalf("EncodeTimeout(%v) = %q: a deadline already passed must still be a positive timeout", d, enc)
		}
	})
}
