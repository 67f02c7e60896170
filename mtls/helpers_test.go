package mtls

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"
)

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// swapSource is a Source whose bundle a test replaces while handshakes run (a rotation, a reload).
type swapSource struct{ cur atomic.Pointer[Bundle] }

func newSwapSource(b *Bundle) *swapSource {
	s := &swapSource{}
	s.cur.Store(b)
	return s
}

func (s *swapSource) Bundle() *Bundle { return s.cur.Load() }

// testCA makes a CA for trust domain td (its certificate names spiffe://td, as `meshlet certs` writes it).
func testCA(t testing.TB, td string) *CA {
	t.Helper()
	ca, err := NewCA(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// testLeaf issues a leaf for uri (one URI SAN) signed by ca, valid for an hour, after edit changed its template
// (nil: none); it returns the certificate and its key in PEM.
func testLeaf(t testing.TB, ca *CA, uri string, edit func(*x509.Certificate)) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "test leaf"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatalf("test URI %q: %v", uri, err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

// testRoots is the PEM of the CAs' certificates, in order: a ca_file.
func testRoots(cas ...*CA) []byte {
	var b bytes.Buffer
	for _, ca := range cas {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
	}
	return b.Bytes()
}

// testBundle is NewBundle that fails the test on an error.
func testBundle(t testing.TB, certPEM, keyPEM, caPEM []byte) *Bundle {
	t.Helper()
	b, err := NewBundle(certPEM, keyPEM, caPEM)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testServer runs an mTLS-only Listener with cfg on loopback until the test ends; every connection it accepts
// is answered with "ok" and closed. Refusals are sent on the returned channel with their reasons.
func testServer(t testing.TB, cfg *tls.Config) (addr string, refused <-chan string) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reasons := make(chan string, 16)
	l := NewListener(inner, cfg, ModeMTLS, ListenerHooks{Failed: func(reason string, _ net.Addr, err error) {
		t.Logf("server refused: %s: %v", reason, err)
		select {
		case reasons <- reason:
		default:
		}
	}})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, "ok")
			c.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return inner.Addr().String(), reasons
}

// testDial connects to addr with cfg and reads the server's answer: it returns the connection state and nil
// when the server answered "ok", or the error that ended the attempt (in TLS 1.3 the server's verdict on the
// client certificate arrives with the first read).
func testDial(addr string, cfg *tls.Config) (tls.ConnectionState, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		return c.ConnectionState(), err
	}
	if string(got) != "ok" {
		return c.ConnectionState(), errors.New("server closed without answering: " + string(got))
	}
	return c.ConnectionState(), nil
}

// tlsPair is tls.X509KeyPair returning a pointer.
func tlsPair(certPEM, keyPEM []byte) (*tls.Certificate, error) {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &c, nil
}
