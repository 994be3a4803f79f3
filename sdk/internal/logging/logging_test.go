package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func TestParseLevel(t *testing.T) {
	cases := []struct {
		in   string
		want slog.Level
		ok   bool
	}{
		{"", slog.LevelInfo, true},
		{"trace", LevelTrace, true},
		{"DEBUG", slog.LevelDebug, true},
		{" info ", slog.LevelInfo, true},
		{"warn", slog.LevelWarn, true},
		{"warning", slog.LevelWarn, true},
		{"error", slog.LevelError, true},
		{"loud", slog.LevelInfo, false},
	}
	for _, c := range cases {
		got, err := ParseLevel(c.in)
		if got != c.want || (err == nil) != c.ok {
			t.Errorf("ParseLevel(%q) = %v, %v", c.in, got, err)
		}
		if c.ok && c.in != "" && c.in != "warning" {
			if back, _ := ParseLevel(LevelName(got)); back != got {
				t.Errorf("LevelName(%v) = %q does not read back", got, LevelName(got))
			}
		}
	}
}

func TestHCLogThroughSlog(t *testing.T) {
	var buf bytes.Buffer
	l := HCLog(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), "host")
	if l.IsTrace() || !l.IsDebug() || !l.IsError() || l.GetLevel() != hclog.Debug {
		t.Errorf("levels: trace %v debug %v level %v", l.IsTrace(), l.IsDebug(), l.GetLevel())
	}
	l.Trace("dropped")
	l.Named("plugin").With("pid", 7).Warn("plugin exited", "code", 1)
	l.ResetNamed("other").Info("hi")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines, got %q", lines)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["level"] != "WARN" || rec["msg"] != "plugin exited" || rec["logger"] != "host.plugin" || rec["pid"] != 7.0 || rec["code"] != 1.0 {
		t.Errorf("record %v", rec)
	}
	if !strings.Contains(lines[1], `"logger":"other"`) {
		t.Errorf("ResetNamed: %s", lines[1])
	}
	if got := HCLog(nil, "").Name(); got != "" {
		t.Errorf("nil logger name %q", got)
	}
	HCLog(nil, "x").Error("to nowhere") // must not panic
}

func TestStderrHandlerSpeaksHCLogJSON(t *testing.T) {
	var buf bytes.Buffer
	slog.New(StderrHandler(&buf, LevelTrace)).Log(t.Context(), LevelTrace, "deep", "k", "v")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["@level"] != "trace" || rec["@message"] != "deep" || rec["k"] != "v" {
		t.Errorf("record %v", rec)
	}
	ts, _ := rec["@timestamp"].(string)
	if _, err := time.Parse(hclogTime, ts); err != nil {
		t.Errorf("go-plugin cannot read the timestamp: %v", err)
	}
}

func TestTextHandlerNamesTrace(t *testing.T) {
	var buf bytes.Buffer
	slog.New(TextHandler(&buf, LevelTrace)).Log(t.Context(), LevelTrace, "deep")
	if !strings.Contains(buf.String(), "level=TRACE") {
		t.Errorf("got %s", buf.String())
	}
}
