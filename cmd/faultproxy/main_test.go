package main

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary re-executes itself as the faultproxy command.
func TestMain(m *testing.M) {
	if os.Getenv("FAULTPROXY_AS_MAIN") == "1" {
		os.Args = append([]string{"faultproxy"}, strings.Fields(os.Getenv("FAULTPROXY_ARGS"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestCommandControlAndGracefulShutdown(t *testing.T) {
	echo, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := echo.ReadFromUDP(buf)
			if err != nil {
				return
			}
			echo.WriteToUDP(buf[:n], from)
		}
	}()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FAULTPROXY_AS_MAIN=1",
		"FAULTPROXY_ARGS=--listen 127.0.0.2:0 --target "+echo.LocalAddr().String()+" --control 127.0.0.1:0")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`ready listen=(\S+) control=(\S+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("unexpected first line %q", line)
	}
	proxyAddr, ctl := m[1], "http://"+m[2]

	c, err := net.Dial("udp", proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	roundTrip := func() bool {
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err := c.Read(make([]byte, 16))
		return err == nil
	}
	if !roundTrip() {
		t.Fatal("no echo through the proxy")
	}
	post := func(path string) {
		resp, err := http.Post(ctl+path, "", nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("POST %s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
	post("/partition?dir=both")
	if roundTrip() {
		t.Fatal("echo through a partition")
	}
	post("/heal")
	if !roundTrip() {
		t.Fatal("no echo after heal")
	}
	resp, err := http.Get(ctl + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Up struct{ Forwarded, Dropped uint64 }
	}
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st.Up.Forwarded != 2 || st.Up.Dropped != 1 {
		t.Fatalf("stats %+v", st)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}
