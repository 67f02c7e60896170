package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// handler serves GET / by calling api over gRPC and over HTTP at the same time.
type handler struct {
	greeter  grpc.ClientConnInterface // demo.Greeter
	priceURL string                   // api's GET /price, without query
	client   *http.Client
	timeout  time.Duration // per call to api
	log      *slog.Logger
}

// page is the JSON answer of GET /.
type page struct {
	Greeting string          `json:"greeting"`
	Price    json.RawMessage `json:"price"`
	TookMS   float64         `json:"took_ms"`
}

// apiError is the JSON answer of GET / when a call to api failed.
type apiError struct {
	Error string `json:"error"`
	Call  string `json:"call"` // "grpc" or "http"
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	name, item := r.URL.Query().Get("name"), r.URL.Query().Get("item")
	if name == "" {
		name = "world"
	}
	if item == "" {
		item = "coffee"
	}

	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	type result struct {
		body []byte
		err  error
	}
	priceCh := make(chan result, 1)
	go func() {
		body, err := h.price(ctx, item)
		priceCh <- result{body, err}
	}()
	greeting, gErr := h.sayHello(ctx, name)
	price := <-priceCh

	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	switch {
	case gErr != nil:
		h.fail(w, enc, "grpc", gErr)
	case price.err != nil:
		h.fail(w, enc, "http", price.err)
	default:
		took := float64(time.Since(start).Microseconds()) / 1000
		enc.Encode(page{Greeting: greeting, Price: price.body, TookMS: took})
	}
}

func (h *handler) fail(w http.ResponseWriter, enc *json.Encoder, call string, err error) {
	h.log.Warn("call to api failed", "call", call, "error", err)
	w.WriteHeader(http.StatusBadGateway)
	enc.Encode(apiError{Error: err.Error(), Call: call})
}

// sayHello calls demo.Greeter/SayHello.
func (h *handler) sayHello(ctx context.Context, name string) (string, error) {
	out := new(wrapperspb.StringValue)
	if err := h.greeter.Invoke(ctx, "/demo.Greeter/SayHello", wrapperspb.String(name), out); err != nil {
		return "", err
	}
	return out.GetValue(), nil
}

// price calls GET /price and returns its JSON body.
func (h *handler) price(ctx context.Context, item string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.priceURL+"?item="+url.QueryEscape(item), nil)
	if err != nil {
		return nil, err
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /price: %s: %.200s", resp.Status, bytes.TrimSpace(body))
	}
	return body, nil
}
