// A Go peer for tests/interop_go.rs, standard library only (crypto/tls).
//
//	peer client ADDR CA [CERT KEY] SERVERNAME   one line out, one line back
//	peer server CA CERT KEY                     prints "listening on ADDR", answers each line
//
// The client prints "reply: ..." or "error: ..." and exits 0 either way; the
// server requires and verifies a client certificate against CA, TLS 1.3 only.
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strings"
)

func pool(path string) *x509.CertPool {
	pem, err := os.ReadFile(path)
	if err != nil {
		fail(err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		fail(fmt.Errorf("no certificate in %s", path))
	}
	return p
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "peer:", err)
	os.Exit(2)
}

func client(args []string) {
	addr, ca := args[0], args[1]
	name := args[len(args)-1]
	config := &tls.Config{
		RootCAs:    pool(ca),
		ServerName: name,
		MinVersion: tls.VersionTLS13,
	}
	if len(args) == 5 {
		pair, err := tls.LoadX509KeyPair(args[2], args[3])
		if err != nil {
			fail(err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	conn, err := tls.Dial("tcp", addr, config)
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping from go\n")); err != nil {
		fmt.Println("error:", err)
		return
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	fmt.Println("reply:", strings.TrimSpace(line))
}

func server(args []string) {
	pair, err := tls.LoadX509KeyPair(args[1], args[2])
	if err != nil {
		fail(err)
	}
	config := &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool(args[0]),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}
	listener, err := tls.Listen("tcp", "127.0.0.1:0", config)
	if err != nil {
		fail(err)
	}
	fmt.Println("listening on", listener.Addr())
	for {
		conn, err := listener.Accept()
		if err != nil {
			fail(err)
		}
		go func(conn net.Conn) {
			defer conn.Close()
			reader := bufio.NewReader(conn)
			for {
				line, err := reader.ReadString('\n')
				if err != nil {
					return
				}
				who := "unknown"
				if state := conn.(*tls.Conn).ConnectionState(); len(state.PeerCertificates) > 0 {
					for _, uri := range state.PeerCertificates[0].URIs {
						who = uri.String()
					}
				}
				fmt.Fprintf(conn, "hello %s from go, you said %q\n", who, strings.TrimSpace(line))
			}
		}(conn)
	}
}

func main() {
	if len(os.Args) < 2 {
		fail(fmt.Errorf("usage: peer client|server ..."))
	}
	switch os.Args[1] {
	case "client":
		client(os.Args[2:])
	case "server":
		server(os.Args[2:])
	default:
		fail(fmt.Errorf("unknown mode %q", os.Args[1]))
	}
}
