package journal

import (
	"context"
	"encoding/json"
	"io"
	"strings"
)

// ECS field values by record kind.
var ecsKind = map[string][3]string{ // event.kind, event.category, event.type
	KindFindingOpened: {"alert", "intrusion_detection", "start"},
	KindFindingClosed: {"event", "intrusion_detection", "end"},
	KindAlarm:         {"alert", "host", "change"},
	KindLifecycle:     {"event", "host", "info"},
	KindAction:        {"event", "host", "change"},
	KindEvidence:      {"event", "file", "creation"},
	KindDaemon:        {"event", "host", "info"},
	KindBackup:        {"event", "file", "creation"},
}

var severityNumber = map[string]int{"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5, "green": 1, "warning": 3}

// ECS converts a record into an Elastic Common Schema document.
func ECS(r Record) map[string]any {
	k, ok := ecsKind[r.Kind]
	if !ok {
		k = [3]string{"event", "host", "info"}
	}
	ev := map[string]any{
		"kind": k[0], "category": []string{k[1]}, "type": []string{k[2]},
		"action": r.Kind, "sequence": r.Seq, "dataset": "vmwatch.journal", "module": "vmwatch",
	}
	if n, ok := severityNumber[strings.ToLower(r.Severity)]; ok {
		ev["severity"] = n
	}
	doc := map[string]any{
		"@timestamp": r.Time.UTC().Format("2006-01-02T15:04:05.000000000Z07:00"),
		"event":      ev,
		"message":    r.Message,
		"host":       map[string]any{"name": r.VM, "hostname": r.VM, "type": "virtual_machine"},
		"observer":   map[string]any{"product": "vmwatch", "type": "hypervisor-introspection"},
		"vmwatch":    map[string]any{"seq": r.Seq, "hash": r.Hash, "prev_hash": r.PrevHash, "subject": r.Subject, "severity": r.Severity},
	}
	var data map[string]any
	if len(r.Data) > 0 && json.Unmarshal(r.Data, &data) == nil {
		doc["vmwatch"].(map[string]any)["data"] = data
	}
	switch r.Kind {
	case KindFindingOpened, KindFindingClosed:
		rule := map[string]any{"id": data["id"], "name": data["id"], "description": data["title"], "category": "vmwatch"}
		doc["rule"] = rule
		if a, _ := data["attack"].(string); a != "" {
			doc["threat"] = map[string]any{"framework": "MITRE ATT&CK", "technique": map[string]any{"id": []string{a}}}
		}
		if ev, ok := data["evidence"].(map[string]any); ok {
			if pids, ok := ev["pids"].([]any); ok && len(pids) > 0 {
				p := map[string]any{"pid": pids[0]}
				if names, ok := ev["processes"].([]any); ok && len(names) > 0 {
					if s, ok := names[0].(string); ok {
						if _, n, ok := strings.Cut(s, " "); ok {
							p["name"] = n
						}
					}
				}
				doc["process"] = p
			}
		}
	case KindAlarm:
		doc["rule"] = map[string]any{"name": r.Subject, "category": "vmwatch-alarm"}
	}
	return doc
}

// Export writes records as JSON lines with ECS field names.
func (j *Journal) Export(ctx context.Context, w io.Writer, q Query) (int, error) {
	enc := json.NewEncoder(w)
	n := 0
	for {
		q.Limit = 1000
		rs, err := j.List(ctx, q)
		if err != nil {
			return n, err
		}
		for _, r := range rs {
			if err := enc.Encode(ECS(r)); err != nil {
				return n, err
			}
			n++
		}
		if len(rs) < q.Limit {
			return n, nil
		}
		q.After = rs[len(rs)-1].Seq
	}
}
