// Interop scenarios for Go's amqp091-go (Debian golang-github-rabbitmq-amqp091-go-dev):
// publish with confirms, consume with manual acks, NotifyClose on a channel error.
// Prints "ok   NAME" / "FAIL NAME: why", then "go: N passed, N failed".
package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

var run = func() string {
	b := make([]byte, 5)
	rand.Read(b)
	return hex.EncodeToString(b)
}()

func name(suffix string) string { return "interop.go." + run + "." + suffix }

func confirmsAndConsume(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	q, err := ch.QueueDeclare(name("confirms"), true, false, false, false, nil)
	if err != nil {
		return err
	}
	defer ch.QueueDelete(q.Name, false, false, false)
	if err := ch.Confirm(false); err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, 1000))
	for i := 0; i < 1000; i++ {
		err := ch.Publish("", q.Name, false, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			Body:         []byte(fmt.Sprintf("m-%d", i)),
		})
		if err != nil {
			return err
		}
	}
	// The library hands out one confirmation per tag, in order, expanding `multiple`.
	for i := uint64(1); i <= 1000; i++ {
		select {
		case c := <-confirms:
			if !c.Ack || c.DeliveryTag != i {
				return fmt.Errorf("confirmation %d: %+v", i, c)
			}
		case <-time.After(10 * time.Second):
			return fmt.Errorf("confirm %d did not arrive", i)
		}
	}
	if err := ch.Qos(50, 0, false); err != nil {
		return err
	}
	msgs, err := ch.Consume(q.Name, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	for i := 0; i < 1000; i++ {
		select {
		case d := <-msgs:
			if want := fmt.Sprintf("m-%d", i); string(d.Body) != want || d.DeliveryMode != amqp.Persistent {
				return fmt.Errorf("delivery %d: body %q mode %d", i, d.Body, d.DeliveryMode)
			}
			if err := d.Ack(false); err != nil {
				return err
			}
		case <-time.After(10 * time.Second):
			return fmt.Errorf("delivery %d did not arrive", i)
		}
	}
	return nil
}

func notifyCloseOnChannelError(conn *amqp.Connection) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	_, err = ch.QueueDeclarePassive(name("missing"), false, false, false, false, nil)
	e, ok := err.(*amqp.Error)
	if !ok || e.Code != amqp.NotFound {
		return fmt.Errorf("passive declare: %v", err)
	}
	select {
	case c := <-closes:
		if c == nil || c.Code != amqp.NotFound || c.Server != true {
			return fmt.Errorf("NotifyClose got %+v", c)
		}
	case <-time.After(5 * time.Second):
		return fmt.Errorf("no NotifyClose")
	}
	// The connection survives a channel error.
	ch2, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("new channel after the error: %v", err)
	}
	return ch2.Close()
}

func main() {
	url := os.Getenv("AMQP_URL")
	if url == "" {
		url = "amqp://guest:guest@127.0.0.1:5672/%2F"
	}
	fmt.Printf("amqp091-go against %s (run %s)\n", url, run)
	scenarios := []struct {
		name string
		run  func(*amqp.Connection) error
	}{
		{"publish_1000_with_confirms_and_consume", confirmsAndConsume},
		{"notify_close_on_channel_error_404", notifyCloseOnChannelError},
	}
	passed, failed := 0, 0
	for _, s := range scenarios {
		started := time.Now()
		conn, err := amqp.Dial(url)
		if err == nil {
			err = s.run(conn)
			conn.Close()
		}
		if err != nil {
			failed++
			fmt.Printf("FAIL %s: %v\n", s.name, err)
		} else {
			passed++
			fmt.Printf("ok   %s (%.2fs)\n", s.name, time.Since(started).Seconds())
		}
	}
	fmt.Printf("go: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}
