package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

// tlsVersions are the versions min_version allows, with the name the config uses.
var tlsVersions = []struct {
	name    string
	version uint16
}{{"1.3", tls.VersionTLS13}, {"1.2", tls.VersionTLS12}}

// TestResumedServerVerifiesPeer: a client that resumed its session before one of the roots was removed is
// refused on its next (resumed) handshake, in TLS 1.3 and 1.2. Go calls VerifyPeerCertificate only on full
// handshakes: a session ticket (valid up to 7 days) would carry the old verdict past the removal.
func TestResumedServerVerifiesPeer(t *testing.T) {
	td := "example.mesh"
	current, retired := testCA(t, td), testCA(t, td)
	apiCert, apiKey := testLeaf(t, current, ServiceID(td, "", "", "api").String(), nil)
	webCert, webKey := testLeaf(t, retired, ServiceID(td, "", "", "web").String(), nil)
	both := testBundle(t, apiCert, apiKey, testRoots(current, retired))
	onlyCurrent := testBundle(t, apiCert, apiKey, testRoots(current))
	web := testBundle(t, webCert, webKey, testRoots(current, retired))

	for _, v := range tlsVersions {
		t.Run(v.name, func(t *testing.T) {
			src := newSwapSource(both)
			scfg, err := ServerConfig(src, v.name)
			if err != nil {
				t.Fatal(err)
			}
			addr, refused := testServer(t, scfg)
			ccfg, err := ClientConfig(staticSource{web}, "1.2", "h2", nil)
			if err != nil {
				t.Fatal(err)
			}
			ccfg.MaxVersion = v.version
			ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)

			if _, err := testDial(addr, ccfg); err != nil {
				t.Fatalf("first handshake: %v", err)
			}
			cs, err := testDial(addr, ccfg)
			if err != nil || !cs.DidResume {
				t.Fatalf("second handshake: resumed %v, error %v; want a resumed session", cs.DidResume, err)
			}
			src.cur.Store(onlyCurrent) // the root that signed web's certificate is gone
			cs, err = testDial(addr, ccfg)
			if err == nil {
				t.Fatalf("a client whose root was removed was let in (resumed: %v)", cs.DidResume)
			}
			select {
			case r := <-refused:
				if r != ReasonUnknownCA {
					t.Fatalf("refused with reason %q, want %q", r, ReasonUnknownCA)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the server reported no refusal")
			}
		})
	}
}

// TestResumedClientVerifiesPeer: a sidecar's client (ClientConfig) that resumed a session with a server is
// refused on its next resumed handshake once the server's root is no longer trusted.
func TestResumedClientVerifiesPeer(t *testing.T) {
	td := "example.mesh"
	current, retired := testCA(t, td), testCA(t, td)
	apiCert, apiKey := testLeaf(t, retired, ServiceID(td, "", "", "api").String(), nil)
	webCert, webKey := testLeaf(t, current, ServiceID(td, "", "", "web").String(), nil)
	api := testBundle(t, apiCert, apiKey, testRoots(current, retired))
	webBoth := testBundle(t, webCert, webKey, testRoots(current, retired))
	webCurrent := testBundle(t, webCert, webKey, testRoots(current))

	for _, v := range tlsVersions {
		t.Run(v.name, func(t *testing.T) {
			scfg, err := ServerConfig(staticSource{api}, "1.2")
			if err != nil {
				t.Fatal(err)
			}
			addr, _ := testServer(t, scfg)
			src := newSwapSource(webBoth)
			ccfg, err := ClientConfig(src, v.name, "h2", nil)
			if err != nil {
				t.Fatal(err)
			}
			ccfg.MaxVersion = v.version
			ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
			if _, err := testDial(addr, ccfg); err != nil {
				t.Fatalf("first handshake: %v", err)
			}
			if cs, err := testDial(addr, ccfg); err != nil || !cs.DidResume {
				t.Fatalf("second handshake: resumed %v, error %v; want a resumed session", cs.DidResume, err)
			}
			src.cur.Store(webCurrent)
			cs, err := testDial(addr, ccfg)
			if err == nil {
				t.Fatalf("the client accepted a server whose root was removed (resumed: %v)", cs.DidResume)
			}
			if r := Reason(err); r != ReasonUnknownCA {
				t.Fatalf("client refused with reason %q (%v), want %q", r, err, ReasonUnknownCA)
			}
		})
	}
}

// TestResumedExpiredClient: a client whose certificate expired after its session began does not get back in
// with its ticket: the resumed handshake is refused (Go declines such a ticket itself; the full handshake that
// follows is refused as expired).
func TestResumedExpiredClient(t *testing.T) {
	td := "example.mesh"
	ca := testCA(t, td)
	apiCert, apiKey := testLeaf(t, ca, ServiceID(td, "", "", "api").String(), nil)
	notAfter := time.Now().Add(1500 * time.Millisecond)
	webCert, webKey := testLeaf(t, ca, ServiceID(td, "", "", "web").String(), func(c *x509.Certificate) {
		c.NotAfter = notAfter
	})
	scfg, err := ServerConfig(staticSource{testBundle(t, apiCert, apiKey, testRoots(ca))}, "1.3")
	if err != nil {
		t.Fatal(err)
	}
	addr, refused := testServer(t, scfg)
	ccfg, err := ClientConfig(staticSource{testBundle(t, webCert, webKey, testRoots(ca))}, "1.3", "h2", nil)
	if err != nil {
		t.Fatal(err)
	}
	ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	if _, err := testDial(addr, ccfg); err != nil {
		t.Fatalf("first handshake: %v", err)
	}
	if cs, err := testDial(addr, ccfg); err != nil || !cs.DidResume {
		t.Fatalf("second handshake: resumed %v, error %v; want a resumed session", cs.DidResume, err)
	}
	for deadline := time.Now().Add(5 * time.Second); !time.Now().After(notAfter); {
		if time.Now().After(deadline) {
			t.Fatal("the clock did not pass the certificate's expiry")
		}
		time.Sleep(50 * time.Millisecond) // waits for the clock, not for a state
	}
	if cs, err := testDial(addr, ccfg); err == nil {
		t.Fatalf("an expired client got in (resumed: %v)", cs.DidResume)
	}
	select {
	case r := <-refused:
		if r != ReasonExpired {
			t.Fatalf("refused with reason %q, want %q", r, ReasonExpired)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the server reported no refusal")
	}
}
