package meshlettest

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// H2Conn is a raw prior-knowledge h2c client connection driven frame by frame with golang.org/x/net/http2's
// Framer, for tests that send what no real client sends. Writes go through W (buffered): Flush sends them. It is
// not safe for concurrent writes; readers and writers are the caller's to arrange.
type H2Conn struct {
	Conn   net.Conn
	W      *bufio.Writer
	Framer *http2.Framer
	// Settings are the server's first SETTINGS.
	Settings map[http2.SettingID]uint32
	hbuf     bytes.Buffer
	enc      *hpack.Encoder
}

// NewH2Conn starts HTTP/2 on c: the client preface and an empty SETTINGS, then it reads frames up to the
// server's first SETTINGS (kept in Settings) and acknowledges it, within 10 s. Headers are decoded (MetaHeaders)
// with an HPACK table of decoderTable bytes and lists up to 1 MiB.
func NewH2Conn(c net.Conn, decoderTable uint32) (*H2Conn, error) {
	h := &H2Conn{Conn: c, W: bufio.NewWriterSize(c, 64<<10)}
	h.Framer = http2.NewFramer(h.W, c)
	h.Framer.ReadMetaHeaders = hpack.NewDecoder(decoderTable, nil)
	h.Framer.MaxHeaderListSize = 1 << 20
	h.enc = hpack.NewEncoder(&h.hbuf)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	h.W.WriteString(http2.ClientPreface)
	if err := h.Framer.WriteSettings(); err != nil {
		return nil, err
	}
	if err := h.W.Flush(); err != nil {
		return nil, err
	}
	for h.Settings == nil {
		f, err := h.Framer.ReadFrame()
		if err != nil {
			return nil, fmt.Errorf("reading the server's SETTINGS: %w", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			h.Settings = map[http2.SettingID]uint32{}
			sf.ForeachSetting(func(s http2.Setting) error { h.Settings[s.ID] = s.Val; return nil })
		}
	}
	if err := h.Framer.WriteSettingsAck(); err != nil {
		return nil, err
	}
	return h, h.W.Flush()
}

// Block returns the HPACK encoding of fields, in order (a copy).
func (h *H2Conn) Block(fields [][2]string) []byte {
	h.hbuf.Reset()
	for _, f := range fields {
		h.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return bytes.Clone(h.hbuf.Bytes())
}

// Flush sends the buffered frames.
func (h *H2Conn) Flush() error { return h.W.Flush() }
