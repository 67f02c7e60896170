package main

// meshlet webhook: the injection as a Kubernetes mutating admission webhook, over TLS.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"meshlet.dev/meshlet/inject"
)

// webhookCmd serves POST /inject (AdmissionReview) and GET /healthz on -listen over TLS until SIGTERM or SIGINT.
func webhookCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("webhook", stderr)
	cfg := injectFlags(fs)
	listen := fs.String("listen", ":8443", "host:port to serve HTTPS on")
	certFile := fs.String("tls-cert", "", "serving certificate, PEM (required; reloaded when the file changes)")
	keyFile := fs.String("tls-key", "", "its private key, PEM (required)")
	if code, ok := parseFlags(fs, webhookHelp, args, stdout, stderr); !ok {
		return code
	}
	if fs.NArg() > 0 || *certFile == "" || *keyFile == "" || cfg.Image == "" {
		fmt.Fprintln(stderr, "meshlet webhook: -tls-cert, -tls-key and -image are required (-image defaults to $MESHLET_IMAGE, else "+defaultImage()+"), and no arguments")
		return 2
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil)).With("component", "webhook")
	certs := &certReloader{cert: *certFile, key: *keyFile}
	if _, err := certs.get(nil); err != nil {
		log.Error("cannot load the serving certificate", "error", err.Error())
		return 1
	}
	mux := http.NewServeMux()
	mux.Handle("/inject", &inject.Webhook{Config: *cfg, Log: log})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.get},
		ErrorLog:  slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Error("cannot listen", "listen", *listen, "error", err.Error())
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	log.Info("webhook listening", "listen", ln.Addr().String(), "image", cfg.Image)
	select {
	case err := <-served:
		log.Error("webhook stopped", "error", err.Error())
		return 1
	case sig := <-sigs:
		log.Info("shutting down", "signal", sig.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("shutdown", "error", err.Error())
	}
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Warn("serve", "error", err.Error())
	}
	return 0
}

// certReloader loads the key pair again when the certificate file's modification time changes (cert-manager
// renewing a mounted Secret); a pair that does not load leaves the previous one serving.
type certReloader struct {
	cert, key string
	mu        sync.Mutex
	mtime     time.Time
	current   *tls.Certificate
}

func (c *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := os.Stat(c.cert)
	if err == nil && (c.current == nil || !st.ModTime().Equal(c.mtime)) {
		pair, lerr := tls.LoadX509KeyPair(c.cert, c.key)
		if lerr == nil {
			c.current, c.mtime = &pair, st.ModTime()
		} else if c.current == nil {
			return nil, lerr
		}
	}
	if c.current == nil {
		return nil, err
	}
	return c.current, nil
}
