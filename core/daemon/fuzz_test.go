package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/anka-net/anka/core/config"
	"github.com/anka-net/anka/core/errs"
)

// FuzzRequest sends arbitrary bodies to every operation of the daemon's
// HTTP handler, as a local process may. The daemon answers each with a
// JSON response that carries a kind and a sentence, and never panics.
// Requests that would reach a real operation (a valid configuration for
// this daemon's state dir) are skipped: they start plugins, and other
// tests cover them.
func FuzzRequest(f *testing.F) {
	dir := f.TempDir()
	stateDir := filepath.Join(dir, "state-7c1d0a")
	cfg, err := config.Load(config.Options{
		LookupEnv: func(k string) (string, bool) {
			if k == "ANKA_STATE_DIR" {
				return stateDir, true
			}
			return "", false
		},
		Environ:    func() []string { return nil },
		UserFile:   filepath.Join(dir, "none.yaml"),
		SystemFile: filepath.Join(dir, "none-system.yaml"),
	})
	if err != nil {
		f.Fatal(err)
	}
	other := *cfg
	good, _ := json.Marshal(request{Config: cfg.Snapshot(), Name: "vm1", Timeout: 5e9})
	otherSnap := other.Snapshot()
	for i := range otherSnap.Entries {
		if otherSnap.Entries[i].Key == "state_dir" {
			otherSnap.Entries[i].Value = "/var/lib/other"
		}
	}
	elsewhere, _ := json.Marshal(request{Config: otherSnap, Name: "vm1", Card: nil})
	f.Add(elsewhere, "start")
	f.Add(elsewhere, "shutdown")
	f.Add([]byte(strings.Replace(string(elsewhere), `"1500"`, `"9"`, 1)), "set-card")
	f.Add(good[:len(good)/2], "stop")
	f.Add([]byte(`{"config":{"entries":[{"Key":"mtu","Value":"x","Source":"flag"}]}}`), "status")
	f.Add([]byte(`{"config":{"entries":null},"timeout":-1,"rule":{"host_port":99999}}`), "add-forward")
	f.Add([]byte(`[]`), "x/../../start")
	f.Add([]byte{}, "")
	s := &Server{Config: cfg, Logger: discardLogger(), quit: make(chan struct{})}
	h := s.handler()
	f.Fuzz(func(t *testing.T, body []byte, op string) {
		var req request
		// Decoded as the handler does: a decoder stops after the first
		// value, so trailing bytes must not hide a real operation.
		if json.NewDecoder(bytes.NewReader(body)).Decode(&req) == nil {
			if c, err := config.FromSnapshot(req.Config); err == nil && filepath.Clean(c.StateDir) == filepath.Clean(stateDir) {
				return
			}
		}
		r, err := http.NewRequest(http.MethodPost, "http://anka/v1/"+op, bytes.NewReader(body))
		if err != nil {
			return // not a request a client can send
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code == http.StatusNotFound || w.Code == http.StatusMethodNotAllowed || w.Code/100 == 3 {
			return // the mux refused the path before the daemon saw it
		}
		if w.Header().Get(protocolVersionH) == "" {
			t.Fatalf("%d answer without the protocol header", w.Code)
		}
		var resp response
		if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
			t.Fatalf("answer is not JSON (%v): %q", err, w.Body.Bytes())
		}
		if resp.Error == nil || resp.Error.Message == "" || resp.Error.Kind < errs.Internal || resp.Error.Kind > errs.Unavailable {
			t.Fatalf("a request for another state dir or a broken one got %+v", resp.Error)
		}
		select {
		case <-s.quit:
			t.Fatal("a refused request shut the daemon down")
		default:
		}
	})
}

type bodyTransport []byte

func (b bodyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Body: io.NopCloser(bytes.NewReader(b)), Header: http.Header{}, Request: r}, nil
}

// FuzzResponse hands the CLI's client arbitrary answers, as a daemon of
// another version or a stranger on the socket might. The client returns a
// response or an error with a known kind (the exit code) and a sentence;
// an error the daemon sent keeps its message.
func FuzzResponse(f *testing.F) {
	for _, s := range []string{
		`{"status":{"name":"vm1","state":"running"}}`,
		`{"error":{"kind":3,"message":"VM \"x\" does not exist"}}`,
		`{"error":{"kind":0,"message":"no kind"}}`,
		`{"error":{"kind":-1,"message":""}}`,
		`{"error":{"kind":99}}`,
		`{"error":{"kind":"2"}}`,
		`{"daemon":{"pid":1,"plugins":[{"binary":"x","running":true}]}}`,
		`{"names":["a","b"],"pid":12}`,
		`{"error":null}`,
		`not json`,
		``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		c := &Client{StateDir: "/nonexistent/anka", NoStart: true, http: &http.Client{Transport: bodyTransport(body)}}
		resp, err := c.call(context.Background(), opStatus, &request{})
		if err == nil {
			if resp == nil || resp.Error != nil {
				t.Fatalf("no error, but response %+v", resp)
			}
			return
		}
		if k := errs.KindOf(err); k < errs.Internal || k > errs.Unavailable {
			t.Fatalf("error %q has kind %d: the CLI would exit with %d", err, k, int(k))
		}
		if err.Error() == "" {
			t.Fatal("an error without a sentence")
		}
		if resp != nil && resp.Error != nil && resp.Error.Message != "" && !strings.Contains(err.Error(), resp.Error.Message) {
			t.Fatalf("the daemon said %q, the CLI shows %q", resp.Error.Message, err)
		}
	})
}
