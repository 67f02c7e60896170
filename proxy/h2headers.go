package proxy

import (
	"errors"
	"fmt"
	"strings"
	"sync"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Headers reads the header blocks of a connection (a HEADERS frame and its CONTINUATION frames) into a
// MetaHeadersFrame as x/net's Framer does with ReadMetaHeaders set (its readMetaFrame and checkPseudos: the same
// limits, refusals and errors), but into a slice of fields and a frame it keeps from block to block, where x/net
// makes both anew for each block and grows the slice field by field (the largest allocation of an HTTP/2 request
// through meshlet). The caller uses a block before it reads the next frame, and copies what it keeps: the
// fields' strings are the decoder's own, new for each field. The framer it reads from has no ReadMetaHeaders.
type h2Headers struct {
	dec            *hpack.Decoder
	maxList        uint32 // the header list limit (x/net's Framer.MaxHeaderListSize; 0: 16 MiB)
	fields         []hpack.HeaderField
	buf            *[]hpack.HeaderField // what fields came from (h2FieldPool); nil after release
	mh             http2.MetaHeadersFrame
	headersRemain  uint32
	trailersRemain uint32
	sawRegular     bool
	invalid        error
}

func newH2Headers(dec *hpack.Decoder, maxList uint32) *h2Headers {
	if maxList == 0 {
		maxList = 16 << 20
	}
	h := &h2Headers{dec: dec, maxList: maxList}
	dec.SetEmitFunc(h.emit)
	if v := int(maxList); v >= 0 {
		dec.SetMaxStringLength(v)
	}
	return h
}

// readFrame is fr.ReadFrame with a header block read whole (a *http2.MetaHeadersFrame).
func (h *h2Headers) readFrame(fr *http2.Framer) (http2.Frame, error) {
	f, err := fr.ReadFrame()
	if err != nil {
		return nil, err
	}
	if hf, ok := f.(*http2.HeadersFrame); ok {
		return h.read(fr, hf)
	}
	return f, nil
}

// release gives the field slice back to its pool and drops the last block's frame: a connection waiting for its
// next frame keeps neither. Called by the connection's reader, as read is: h2Headers has no lock.
func (h *h2Headers) release() {
	if h.buf != nil {
		clear(h.fields[:cap(h.fields)]) // no string of a block is kept alive by the pool
		*h.buf = h.fields[:0]
		h2FieldPool.Put(h.buf)
		h.buf, h.fields = nil, nil
	}
	h.mh = http2.MetaHeadersFrame{}
}

// h2FieldPool holds field slices of the connections that wait (h2Headers.release).
var h2FieldPool = sync.Pool{New: func() any {
	s := make([]hpack.HeaderField, 0, 16)
	return &s
}}

// emit takes a decoded field (x/net's readMetaFrame's emit function).
func (h *h2Headers) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		h.invalid = h2FieldValueError(hf.Name) // not the value: it may be sensitive
	}
	if strings.HasPrefix(hf.Name, ":") {
		if h.sawRegular {
			h.invalid = errH2PseudoAfterRegular
		}
	} else {
		h.sawRegular = true
		if !validWireFieldName(hf.Name) {
			h.invalid = h2FieldNameError(hf.Name)
		}
	}
	if h.invalid != nil {
		h.dec.SetEmitEnabled(false)
		return
	}
	remain := &h.headersRemain
	var size uint32
	if hf.Name == "trailer" {
		remain = &h.trailersRemain
		n := strings.Count(hf.Value, ",") + 1
		size = uint32(len(hf.Value)-n+1) + uint32(n)*hpack.HeaderField{}.Size()
	} else {
		size = hf.Size()
	}
	if size > *remain {
		h.dec.SetEmitEnabled(false)
		h.mh.Truncated = true
		h.headersRemain, h.trailersRemain = 0, 0
		return
	}
	*remain -= size
	h.fields = append(h.fields, hf)
}

// read decodes the block that first starts, reading its CONTINUATION frames from fr.
func (h *h2Headers) read(fr *http2.Framer, first *http2.HeadersFrame) (http2.Frame, error) {
	if h.buf == nil {
		h.buf = h2FieldPool.Get().(*[]hpack.HeaderField)
		h.fields = *h.buf
	}
	clear(h.fields[:cap(h.fields)]) // no string of an earlier block is kept alive
	h.fields = h.fields[:0]
	h.mh = http2.MetaHeadersFrame{HeadersFrame: first}
	h.headersRemain, h.trailersRemain = h.maxList, h.maxList
	h.sawRegular, h.invalid = false, nil
	h.dec.SetEmitEnabled(true)
	frag, ended := first.HeaderBlockFragment(), first.HeadersEnded()
	for {
		// A fragment far over what the list may still take, or any after an invalid field: the connection ends.
		if int64(len(frag)) > 2*int64(h.headersRemain+h.trailersRemain) || h.invalid != nil {
			h.mh.Fields = h.fields
			return &h.mh, http2.ConnectionError(http2.ErrCodeProtocol)
		}
		if _, err := h.dec.Write(frag); err != nil {
			h.mh.Fields = h.fields
			return &h.mh, http2.ConnectionError(http2.ErrCodeCompression)
		}
		if ended {
			break
		}
		f, err := fr.ReadFrame()
		if err != nil {
			return nil, err
		}
		cf := f.(*http2.ContinuationFrame) // the framer checks the frames' order
		frag, ended = cf.HeaderBlockFragment(), cf.HeadersEnded()
	}
	h.mh.Fields = h.fields
	if err := h.dec.Close(); err != nil {
		return &h.mh, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if h.invalid != nil {
		return nil, http2.StreamError{StreamID: first.StreamID, Code: http2.ErrCodeProtocol, Cause: h.invalid}
	}
	if err := checkH2Pseudos(h.mh.PseudoFields()); err != nil {
		return nil, http2.StreamError{StreamID: first.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return &h.mh, nil
}

// checkH2Pseudos is x/net's MetaHeadersFrame.checkPseudos.
func checkH2Pseudos(pf []hpack.HeaderField) error {
	var isRequest, isResponse bool
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			isRequest = true
		case ":status":
			isResponse = true
		default:
			return fmt.Errorf("invalid pseudo-header %q", hf.Name)
		}
		for _, hf2 := range pf[:i] {
			if hf.Name == hf2.Name {
				return fmt.Errorf("duplicate pseudo-header %q", hf.Name)
			}
		}
	}
	if isRequest && isResponse {
		return errors.New("mix of request and response pseudo headers")
	}
	return nil
}

// validWireFieldName is x/net's validWireHeaderFieldName: a token without upper case.
func validWireFieldName(v string) bool {
	if !httpguts.ValidHeaderFieldName(v) {
		return false
	}
	for i := 0; i < len(v); i++ {
		if 'A' <= v[i] && v[i] <= 'Z' {
			return false
		}
	}
	return true
}

var errH2PseudoAfterRegular = errors.New("pseudo header field after regular")

type h2FieldNameError string

func (e h2FieldNameError) Error() string {
	return fmt.Sprintf("invalid header field name %q", string(e))
}

type h2FieldValueError string

func (e h2FieldValueError) Error() string {
	return fmt.Sprintf("invalid header field value for %q", string(e))
}
