package grpcwire

import (
	"net/http"
	"net/url"
	"testing"
	"time"
)

func TestParseTimeout(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"1S", time.Second, true},
		{"200m", 200 * time.Millisecond, true},
		{"5u", 5 * time.Microsecond, true},
		{"7n", 7, true},
		{"2M", 2 * time.Minute, true},
		{"1H", time.Hour, true},
		{"99999999S", 99999999 * time.Second, true},
		{"999999999S", 0, false}, // more than 8 digits
		{"", 0, false},
		{"S", 0, false},
		{"10", 0, false},
		{"10x", 0, false},
		{"-1S", 0, false},
		{"1.5S", 0, false},
	}
	for _, tt := range tests {
		got, ok := ParseTimeout(tt.in)
		if ok != tt.ok || got != tt.want {
			t.Errorf("ParseTimeout(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestEncodeMessage(t *testing.T) {
	tests := map[string]string{
		"plain message":   "plain message",
		"100% sure":       "100%25 sure",
		"ünïcode":         "%C3%BCn%C3%AFcode",
		"line\nbreak":     "line%0Abreak",
		"":                "",
		"tab\tand ~tilde": "tab%09and ~tilde",
	}
	for in, want := range tests {
		got := EncodeMessage(in)
		if got != want {
			t.Errorf("EncodeMessage(%q) = %q, want %q", in, got, want)
		}
		// The gRPC spec's encoding is percent-encoding of those bytes: decoding must give the input back.
		dec, err := url.PathUnescape(got)
		if err != nil || dec != in {
			t.Errorf("decoding %q gave %q, %v", got, dec, err)
		}
	}
}

// TestDecodeMessage: a grpc-message is percent-decoded; a '%' without two hex digits after it stays.
func TestDecodeMessage(t *testing.T) {
	for in, want := range map[string]string{
		"plain": "plain", "100%25 sure": "100% sure", "%C3%BCn%c3%afcode": "ünïcode", "line%0Abreak": "line\nbreak",
		"": "", "50%": "50%", "%4": "%4", "%zz%41": "%zzA", "%%41": "%A",
	} {
		if got := DecodeMessage(in); got != want {
			t.Errorf("DecodeMessage(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIsGRPC(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/grpc":               true,
		"application/grpc+proto":         true,
		"application/grpc;charset=utf-8": true,
		"application/grpc-web":           false,
		"application/grpc-web+proto":     false,
		"application/json":               false,
		"":                               false,
	} {
		if got := IsGRPC(http.Header{"Content-Type": {ct}}); got != want {
			t.Errorf("IsGRPC(%q) = %v, want %v", ct, got, want)
		}
	}
}

func TestParseStatus(t *testing.T) {
	for in, want := range map[string]int{"0": 0, "14": 14, "16": 16, "17": 2, "-1": 2, "": 2, "x": 2} {
		if got := int(ParseStatus(in)); got != want {
			t.Errorf("ParseStatus(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestEncodeTimeout(t *testing.T) {
	for d, want := range map[time.Duration]string{
		time.Second: "1000000u", 150 * time.Millisecond: "150000u", 2 * time.Minute: "120000m",
		0: "1n", 1500 * time.Millisecond: "1500000u", 5 * time.Millisecond: "5000000n",
		100*time.Second + 1: "100001m", // rounded up, never shorter than what remains
	} {
		if got := EncodeTimeout(d); got != want {
			t.Errorf("EncodeTimeout(%v) = %q, want %q", d, got, want)
		}
	}
}
