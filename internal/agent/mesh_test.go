package agent

import "testing"

func TestAddressed(t *testing.T) {
	a, err := New(Config{RouterURL: "http://127.0.0.1:1", Workspace: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ in, peer, text string }{
		{"@worker review this", "worker", "review this"},
		{"  @worker: can you review\ncommit 4f2a?", "worker", "can you review\ncommit 4f2a?"},
		{"@b-worker.x, hi", "b-worker.x", "hi"},
		{"@worker", "", ""},
		{"hey @worker review", "", ""},
		{"@Worker hi", "", ""},
		{"@-bad hi", "", ""},
	} {
		peer, text, ok := a.addressed(c.in)
		if ok != (c.peer != "") || peer != c.peer || text != c.text {
			t.Errorf("addressed(%q) = %q, %q, %v", c.in, peer, text, ok)
		}
	}
	off, _ := New(Config{RouterURL: "http://127.0.0.1:1", Workspace: t.TempDir(), Tools: []string{"calculator"}})
	if _, _, ok := off.addressed("@worker hi"); ok {
		t.Fatal("a mention is honoured with send_to_agent disabled")
	}
}
