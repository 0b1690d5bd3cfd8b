package main

import (
	"bytes"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestPrint(t *testing.T) {
	var out bytes.Buffer
	err := run([]string{"--print", "--agent-uid", "2000", "--router-port", "9443"}, env(map[string]string{"KARS_DNS": "10.96.0.10"}), &out)
	if err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		`meta skuid 2000 oifname "lo" ip daddr 127.0.0.1 tcp dport 9443 accept`,
		`meta skuid 2000 ip daddr 10.96.0.10 udp dport 53 accept`,
		`meta skuid 2000 ip daddr 169.254.169.254`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}

func TestFlagsOverrideEnvAndBadInputFails(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"--print", "--dns", ""}, env(map[string]string{"KARS_DNS": "10.96.0.10"}), &out); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), "dport 53") {
		t.Errorf("--dns \"\" must override KARS_DNS:\n%s", out.String())
	}
	for _, c := range []struct {
		args []string
		env  map[string]string
	}{
		{[]string{"--print", "--dns", "not-an-ip"}, nil},
		{[]string{"--print", "--router-port", "70000"}, nil},
		{[]string{"--print"}, map[string]string{"KARS_ROUTER_PORT": "x"}},
	} {
		if err := run(c.args, env(c.env), &bytes.Buffer{}); err == nil {
			t.Errorf("%v %v: want an error", c.args, c.env)
		}
	}
}

func TestPrintContract(t *testing.T) {
	var out bytes.Buffer
	err := run([]string{"--print", "--transparent-port", "15001", "--dns-port", "15053", "--inbound-ports", "8444,8445"}, env(nil), &out)
	if err != nil {
		t.Fatal(err)
	}
	s := out.String()
	for _, want := range []string{
		"chain nat_output {",
		`meta skuid 1000 meta nfproto ipv4 udp dport 53 redirect to :15053`,
		`ip daddr != 127.0.0.0/8 ip daddr != 169.254.169.254 meta l4proto tcp redirect to :15001`,
		"chain input {",
		`tcp dport 8445 accept`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	for _, bad := range [][]string{
		{"--print", "--dns", "10.96.0.10", "--dns-port", "15053"},
		{"--print", "--inbound-ports", "x"},
		{"--print", "--transparent-port", "70000"},
	} {
		if err := run(bad, env(nil), &bytes.Buffer{}); err == nil {
			t.Errorf("%v: want an error", bad)
		}
	}
}
