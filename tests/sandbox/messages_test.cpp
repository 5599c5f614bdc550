// The typed messages between the processes (sync.h) and on the control
// socket (control.h): every type round-trips, and anything else is a clear
// error rather than a default value.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "common/error.h"
#include "common/fd.h"
#include "sandbox/control.h"
#include "sandbox/sync.h"
#include "tests/temp_dir.h"

namespace agentshim {
namespace {

using json = nlohmann::json;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(SyncMessages, EveryTypeRoundTrips) {
  std::vector<sync::Message> all = {sync::Failure{"boom"},
                                    sync::Join{{{"v1", {{"cpu", "/x"}}}}},
                                    sync::Joined{},
                                    sync::Userns{42},
                                    sync::UsernsOk{},
                                    sync::Init{4242},
                                    sync::InitOk{},
                                    sync::Idmap{},
                                    sync::IdmapOk{{"/src/a", "/src/b"}, false},
                                    sync::Hooks{},
                                    sync::HooksOk{7},
                                    sync::Seccomp{{"exec", "config"}},
                                    sync::Ready{},
                                    sync::Created{99, 123456789012ULL, {{"path", "/c"}}},
                                    sync::Enter{31337},
                                    sync::Entered{}};
  ASSERT_EQ(all.size(), std::variant_size_v<sync::Message>);
  for (const auto& m : all) {
    std::string wire = sync::encode(m);
    auto back = sync::decode(wire);
    EXPECT_EQ(sync::type_of(back), sync::type_of(m)) << wire;
    EXPECT_EQ(sync::encode(back), wire);
  }
  EXPECT_EQ(std::get<sync::Created>(sync::decode(sync::encode(all[13]))).init_start, 123456789012ULL);
  EXPECT_EQ(std::get<sync::Enter>(sync::decode(sync::encode(all[14]))).pid, 31337);
  EXPECT_EQ(std::get<sync::IdmapOk>(sync::decode(sync::encode(all[8]))).sources,
            (std::vector<std::string>{"/src/a", "/src/b"}));
  EXPECT_FALSE(std::get<sync::IdmapOk>(sync::decode(sync::encode(all[8]))).rootfs);
  EXPECT_TRUE(std::get<sync::IdmapOk>(sync::decode(sync::encode(sync::IdmapOk{{}, true}))).rootfs);
}

TEST(SyncMessages, WireFormatIsTheOldOne) {
  // A CLI and a running supervisor of different versions still agree.
  EXPECT_EQ(json::parse(sync::encode(sync::UsernsOk{})), (json{{"type", "userns-ok"}}));
  EXPECT_EQ(json::parse(sync::encode(sync::HooksOk{5})), (json{{"type", "hooks-ok"}, {"pid", 5}}));
  EXPECT_EQ(json::parse(sync::encode(sync::Failure{"x"})), (json{{"type", "error"}, {"msg", "x"}}));
  auto c =
      std::get<sync::Created>(sync::decode(R"({"type":"created","init_pid":3,"init_start":0,"cgroup":{}})"));
  EXPECT_EQ(c.init_pid, 3);
}

TEST(SyncMessages, UnknownAndMalformedAreErrors) {
  auto has = [](const std::string& err, const std::string& part) {
    return err.find(part) != std::string::npos;
  };
  EXPECT_TRUE(
      has(error_of([] { sync::decode(R"({"type":"launch"})"); }), "unknown sync message type \"launch\""));
  EXPECT_TRUE(has(error_of([] { sync::decode("not json"); }), "malformed sync message"));
  EXPECT_TRUE(has(error_of([] { sync::decode("[1]"); }), "not a JSON object"));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"pid":1})"); }), "no \"type\""));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":7})"); }), "no \"type\""));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":"init"})"); }), "\"init\": pid"));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":"init","pid":"12"})"); }), "pid must be an integer"));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":"init","pid":0})"); }), "not a pid"));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":"init","pid":-1})"); }), "not a pid"));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":"init","pid":4294967296})"); }), "not a pid"));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":"seccomp","kinds":["exec",1]})"); }), "kinds"));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":"idmap-ok"})"); }), "sources"));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":"idmap-ok","sources":[]})"); }), "rootfs"));
  EXPECT_TRUE(
      has(error_of([] { sync::decode(R"({"type":"idmap-ok","sources":[],"rootfs":1})"); }), "rootfs"));
  EXPECT_TRUE(has(error_of([] { sync::decode(R"({"type":"error"})"); }), "msg must be a string"));
  EXPECT_TRUE(
      has(error_of([] { sync::decode(R"({"type":"join","cgroup":[]})"); }), "cgroup must be an object"));
  EXPECT_TRUE(
      has(error_of([] { sync::decode(R"({"type":"created","init_pid":3,"init_start":-1,"cgroup":{}})"); }),
          "init_start"));
}

TEST(SyncMessages, DescriptorsTravelAndAreCounted) {
  auto [a, b] = make_socketpair(SOCK_SEQPACKET);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  UniqueFd r(p[0]), w(p[1]);
  sync::send(a.get(), sync::Seccomp{{"exec"}}, {r.get()});
  std::vector<UniqueFd> fds;
  auto m = sync::recv(b.get(), &fds);
  ASSERT_TRUE(m);
  ASSERT_EQ(fds.size(), 1u);
  EXPECT_EQ(std::get<sync::Seccomp>(*m).kinds, std::vector<std::string>{"exec"});
  // The sender may not get the count wrong ...
  EXPECT_NE(error_of([&] { sync::send(a.get(), sync::Seccomp{{"exec", "config"}}, {r.get()}); }), "");
  EXPECT_NE(error_of([&] { sync::send(a.get(), sync::Ready{}, {r.get()}); }), "");
  // ... and a peer that does is refused on receipt.
  int one = r.get();
  send_fds(a.get(), R"({"type":"ready"})", &one, 1);
  EXPECT_NE(error_of([&] { sync::recv(b.get(), &fds); }).find("came with 1 descriptors"), std::string::npos);
  send_fds(a.get(), R"({"type":"idmap-ok","sources":["/a"],"rootfs":true})", &one, 1);
  EXPECT_NE(error_of([&] { sync::recv(b.get(), &fds); }).find("expected 2"), std::string::npos);
  // Without the rootfs (the config's own id maps) one descriptor per source only.
  send_fds(a.get(), R"({"type":"idmap-ok","sources":["/a"],"rootfs":false})", &one, 1);
  auto only = sync::recv(b.get(), &fds);
  ASSERT_TRUE(only);
  EXPECT_EQ(fds.size(), 1u);
  int two[2] = {one, one};
  send_fds(a.get(), R"({"type":"idmap-ok","sources":["/a"],"rootfs":false})", two, 2);
  EXPECT_NE(error_of([&] { sync::recv(b.get(), &fds); }).find("expected 1"), std::string::npos);
}

TEST(SyncMessages, ExpectRethrowsThePeersErrorAndRefusesOtherTypes) {
  auto [a, b] = make_socketpair(SOCK_SEQPACKET);
  sync::send(a.get(), sync::HooksOk{9});
  EXPECT_EQ(sync::expect<sync::HooksOk>(b.get(), "gone").pid, 9);
  sync::send(a.get(), sync::Failure{"mount /proc: EPERM"});
  EXPECT_EQ(error_of([&] { sync::expect<sync::HooksOk>(b.get(), "gone"); }), "mount /proc: EPERM");
  sync::send(a.get(), sync::Ready{});
  EXPECT_EQ(error_of([&] { sync::expect<sync::InitOk>(b.get(), "gone"); }),
            "unexpected sync message \"ready\" (expected \"init-ok\")");
  a.reset();
  EXPECT_EQ(error_of([&] { sync::expect<sync::InitOk>(b.get(), "gone"); }), "gone");
}

TEST(ControlMessages, EveryTypeRoundTrips) {
  control::Exec e;
  e.pid = 77;
  e.args = {"sh", "-c", "echo \xff"};
  e.cwd = "/work";
  e.terminal = true;
  e.user = {{"uid", 1000}};
  e.policy_decisions = json::array({{{"rule", "x"}}});
  e.session = "0123456789abcdef";
  std::vector<control::Message> all = {
      control::StartGate{},
      control::Started{},
      e,
      control::Kill{"SIGTERM", true},
      control::Paused{},
      control::Resumed{},
      control::Updated{{{"pids", {{"limit", 5}}}}, json::array()},
      control::ExecObserve{"00ff", 42, {"exec", "config"}},
      control::NetEvent{
          "net.connection",
          {{"host", "example.com"}, {"origin", json::array({{{"pid", 5}, {"container", "a"}}})}},
          "pod-sandbox"}};
  ASSERT_EQ(all.size(), std::variant_size_v<control::Message>);
  for (const auto& m : all) {
    std::string wire;
    try {
      wire = control::encode(m);
    } catch (const std::exception&) {
      // "\xff" is not UTF-8: nlohmann refuses to dump it; drop that arg.
      ASSERT_EQ(control::type_of(m), control::Type::exec);
      auto e2 = std::get<control::Exec>(m);
      e2.args.pop_back();
      wire = control::encode(e2);
    }
    EXPECT_EQ(wire.find('\n'), std::string::npos);
    auto back = control::decode(wire);
    EXPECT_EQ(control::type_of(back), control::type_of(m));
    EXPECT_EQ(control::encode(back), wire);
  }
  auto k = std::get<control::Kill>(control::decode(R"({"type":"kill","signal":"SIGKILL","all":true})"));
  EXPECT_EQ(k.signal, "SIGKILL");
  EXPECT_TRUE(k.all);
  // Optional fields take their defaults, as the old readers did.
  auto bare = std::get<control::Exec>(control::decode(R"({"type":"exec"})"));
  EXPECT_EQ(bare.cwd, "/");
  EXPECT_EQ(bare.pid, 0);
  EXPECT_TRUE(bare.args.empty());
  EXPECT_TRUE(bare.session.empty());
  auto o = std::get<control::ExecObserve>(
      control::decode(R"({"type":"exec-observe","session":"ab12","pid":9,"kinds":["exec"]})"));
  EXPECT_EQ(o.session, "ab12");
  EXPECT_EQ(o.pid, 9);
  EXPECT_EQ(o.kinds, std::vector<std::string>{"exec"});
  auto id = control::new_session_id();
  EXPECT_EQ(id.size(), 16u);
  EXPECT_NE(id, control::new_session_id());
  EXPECT_NO_THROW(control::decode(R"({"type":"exec","session":")" + id + "\"}"));
}

TEST(ControlMessages, UnknownAndMalformedAreErrors) {
  auto has = [](const std::string& err, const std::string& part) {
    return err.find(part) != std::string::npos;
  };
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"reboot"})"); }),
                  "unknown control message type \"reboot\""));
  EXPECT_TRUE(has(error_of([] { control::decode(""); }), "malformed control message"));
  EXPECT_TRUE(has(error_of([] { control::decode("\"started\""); }), "not a JSON object"));
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"exec","args":"sh"})"); }), "args"));
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"exec","args":["sh",1]})"); }), "args"));
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"exec","pid":-4})"); }), "not a pid"));
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"exec","pid":1.5})"); }), "pid"));
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"exec","user":"root"})"); }), "user"));
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"kill","signal":9})"); }), "signal"));
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"kill","all":"yes"})"); }), "all"));
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"updated","resources":[]})"); }), "resources"));
  // A session id becomes part of the record: only hex digits, bounded.
  for (const char* bad :
       {R"({"type":"exec-observe","pid":1,"kinds":[]})", R"({"type":"exec-observe","session":"","kinds":[]})",
        R"({"type":"exec-observe","session":"AB","kinds":[]})",
        R"({"type":"exec-observe","session":"a\n","kinds":[]})", R"({"type":"exec","session":"../x"})"})
    EXPECT_TRUE(has(error_of([&] { control::decode(bad); }), "session")) << bad;
  EXPECT_TRUE(has(error_of([] {
                    control::decode(R"({"type":"exec-observe","session":")" + std::string(65, 'a') + R"("})");
                  }),
                  "session"));
  EXPECT_TRUE(has(error_of([] { control::decode(R"({"type":"exec-observe","session":"a","kinds":["x"]})"); }),
                  "kinds"));
  EXPECT_TRUE(has(
      error_of([] { control::decode(R"({"type":"exec-observe","session":"a","kinds":"exec"})"); }), "kinds"));
  // net-event: only the proxy's two decision events, with a data object and
  // the serving container named; anything else would let a message write
  // arbitrary event types into a record.
  for (const char* bad : {R"({"type":"net-event","event":"run.finalized","data":{},"served_by":"s"})",
                          R"({"type":"net-event","data":{},"served_by":"s"})"})
    EXPECT_TRUE(has(error_of([&] { control::decode(bad); }), "event must be")) << bad;
  EXPECT_TRUE(has(error_of([] {
                    control::decode(
                        R"({"type":"net-event","event":"net.connection","data":[],"served_by":"s"})");
                  }),
                  "data"));
  EXPECT_TRUE(
      has(error_of([] { control::decode(R"({"type":"net-event","event":"net.connection","data":{}})"); }),
          "served_by"));
}

// Descriptors sent with a control message reach the handler; a message
// without them gets none.
TEST(ControlMessages, DescriptorsTravelOverTheSocket) {
  testutil::TempDir dir("control-fds");
  control::Server server(dir.path + "/supervisor.sock");
  auto p = make_pipe(O_CLOEXEC);
  std::atomic<int> got{-1};
  std::atomic<bool> served{false};
  std::thread t([&] {
    while (!served) {
      struct pollfd pfd = {server.fd(), POLLIN, 0};
      ::poll(&pfd, 1, 100);
      server.serve(
          [&](const control::Message& m, std::vector<UniqueFd>& fds) {
            if (std::holds_alternative<control::ExecObserve>(m)) {
              got = static_cast<int>(fds.size());
              if (!fds.empty() && ::write(fds[0].get(), "x", 1) != 1) got = -2;
              served = true;
            }
          },
          [] {});
    }
  });
  int raw[1] = {p.second.get()};
  auto r = control::notify(dir.path, control::ExecObserve{"ab", 1, {"exec"}}, true, 5, {raw[0]});
  t.join();
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_EQ(got, 1);
  p.second.reset();
  char c = 0;
  EXPECT_EQ(::read(p.first.get(), &c, 1), 1);
  EXPECT_EQ(c, 'x');
}

}  // namespace
}  // namespace agentshim
