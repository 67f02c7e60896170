package proxy

// presizeStackFrame is the frame presizeStack takes: with what the server's goroutine already uses, the stack is
// grown once to what the request path needs.
const presizeStackFrame = 6000

// presizeStack grows the calling goroutine's stack once, near its bottom, to the size a proxied request needs.
// Every HTTP/2 request is served on a new goroutine, which starts with a small stack; left alone it grows by
// doubling, each time copying and adjusting every frame of the deep request path (runtime.newstack was 5% of
// meshlet's CPU per h2c request in a profile). One growth here, while the stack holds only a few frames, is cheaper.
// HTTP/1.1 requests run on their connection's goroutine, whose stack has grown at its first request, and need none.
//
//go:noinline
func presizeStack(i int) byte {
	var frame [presizeStackFrame]byte
	frame[i%len(frame)] = byte(i) // uses the compiler cannot fold away (i is not known here): the frame stays
	return frame[(i*7)%len(frame)]
}
