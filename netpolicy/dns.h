// DNS stub served inside the container's network namespace (127.0.0.53:53).
// It never forwards a query: in mode "refuse" every query is answered
// REFUSED; in mode "allowlisted" A/AAAA queries for names the allowlist
// admits are answered with the public addresses the Resolver returns (on the
// host side), everything else REFUSED. Every query is an event "net.dns".
//
// Event data (integers and strings only):
//   {"kind":"query","transport":"udp"|"tcp","client_port":N,"id":N,
//    "name":"<presentation form, non-LDH bytes as \DDD>","qtype":"A"|"AAAA"|...|"TYPE<n>",
//    "rcode":"REFUSED"|"NOERROR"|"FORMERR"|"NOTIMP","answers":N,"rule":"...","reason":"..."}
//   {"kind":"suppressed","count":N}  after more than events_per_second events in one second
//   (one summary event per second in which events were dropped, and one at stop()).
// Messages that are not queries (QR set, shorter than a header) get no answer
// and no event; they are counted in totals()["ignored"].
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.h"
#include "common/stoppable_loop.h"
#include "netpolicy/allowlist.h"
#include "netpolicy/proxy.h"

namespace agentshim::net {

namespace dns {

constexpr uint16_t kTypeA = 1, kTypeAAAA = 28;
constexpr int kNoError = 0, kFormErr = 1, kServFail = 2, kNxDomain = 3, kNotImp = 4, kRefused = 5;

struct Query {
  uint16_t id = 0;
  uint16_t flags = 0;    // as received
  std::string name;      // presentation form (escaped), "." for the root
  std::string ldh_name;  // normalized lowercase name when every label is LDH/underscore, else ""
  uint16_t qtype = 0, qclass = 0;
  std::size_t question_end = 0;  // offset just past the question
};

struct ParseResult {
  enum class State { ok, ignore, error } state = State::ignore;
  Query query;    // id/flags valid for error; everything for ok
  int rcode = 0;  // for error: FORMERR or NOTIMP
  std::string reason;
};

// Pure parser of one DNS query message (no TCP length prefix).
ParseResult parse_query(const uint8_t* data, std::size_t len);
// A response to an ok query: question copied from `msg`, answers (A or AAAA
// records matching qtype; others ignored), TTL 60. At most 16 answers.
std::string build_response(const Query& q, const uint8_t* msg, int rcode, const std::vector<IpAddr>& answers,
                           bool recursion_available);
// Header-only response (for FORMERR / NOTIMP).
std::string header_response(uint16_t id, uint16_t query_flags, int rcode);
std::string qtype_name(uint16_t t);
std::string rcode_name(int rcode);

}  // namespace dns

class DnsStub {
 public:
  // udp_fd bound (127.0.0.53:53 inside the netns); tcp_fd optional (listening).
  // mode: "refuse" or "allowlisted" (anything else: Error).
  DnsStub(UniqueFd udp_fd, UniqueFd tcp_fd, std::string mode, Allowlist allow, EventSink sink,
          Resolver resolver = {});
  ~DnsStub();
  DnsStub(const DnsStub&) = delete;
  DnsStub& operator=(const DnsStub&) = delete;
  void start();
  void stop();
  // {"queries":N,"refused":N,"answered":N,"suppressed_events":N,"malformed":N,"ignored":N}
  json totals() const;
  // Before start(): event budget per second (default 50).
  void set_events_per_second(int n) { events_per_second_ = n; }

  // Answer one message (for tests and the loop). Returns the response bytes
  // ("" = no response) and emits the event.
  std::string handle(const uint8_t* msg, std::size_t len, const char* transport, uint16_t client_port);

 private:
  void loop();
  void event(json data);
  void flush_suppressed(bool force);

  UniqueFd udp_, tcp_;
  std::string mode_;
  Allowlist allow_;
  EventSink sink_;
  Resolver resolver_;
  StoppableLoop loop_{"dns stub"};
  int events_per_second_ = 50;
  std::mutex ev_mu_;
  std::chrono::steady_clock::time_point window_start_{};
  int window_events_ = 0;
  uint64_t window_suppressed_ = 0;
  std::atomic<uint64_t> queries_{0}, refused_{0}, answered_{0}, suppressed_{0}, malformed_{0}, ignored_{0};
};

}  // namespace agentshim::net
