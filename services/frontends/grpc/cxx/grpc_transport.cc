// The compiled gRPC transport of the native frontend (services/frontends/grpc/transport.py is its Python side).
//
// A grpc++ server with one callback *generic* service: it knows no protobuf and no method, it moves bytes.
// Every call becomes events in one queue (new call with its first request message, further messages for
// client-streaming methods, half-close, cancel, write done); an eventfd tells the Python event loop that the
// queue is non-empty, and one `poll()` hands it all queued events at once, so the Python side takes the GIL
// once per burst of calls instead of once per call and per grpc-core callback (what grpc.aio costs: about half
// of the serving process's CPU on single-image requests). Responses go back with `reply` / `write`.
//
// Threads: grpc's own threads run the reactions below; they never take the GIL (the Python side releases it
// while it calls into grpc), so neither side can deadlock on the other. Every grpc operation of a call is
// started *outside* the call's mutex: Finish may run its completion (and OnDone) inline.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/server_credentials.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

enum EventKind : int { kNew = 0, kMessage = 1, kHalfClose = 2, kCancel = 3, kWritten = 4 };

using Metadata = std::vector<std::pair<std::string, std::string>>;
// Per listening address: (certificate chain PEM, private key PEM, client CA PEM). An empty chain = plaintext;
// a CA = mutual TLS (clients must present a certificate it signed, verified by grpc before any call).
using Tls = std::tuple<std::string, std::string, std::string>;

struct Event {
  Event(int kind_, uint64_t id_) : kind(kind_), id(id_) {}
  int kind;
  uint64_t id;
  bool ok = true;                   // kWritten: the write reached the transport
  std::optional<std::string> data;  // kNew (single-message methods) and kMessage: one request message
  std::string method;               // kNew
  std::string peer;                 // kNew
  Metadata metadata;                // kNew
  std::optional<std::string> cert_cn;  // kNew on a TLS port: the verified client certificate's CN ("" without
                                       // a CN); none when the client presented no certificate
  double timeout_s = -1.0;          // kNew: seconds left before the client's deadline, -1: none
};

std::string ToString(const grpc::ByteBuffer& buf) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buf.Dump(&slices).ok()) return out;
  out.reserve(buf.Length());
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

grpc::ByteBuffer ToBuffer(const char* data, size_t size) {
  grpc::Slice slice(data, size);  // copies: the Python object must not be touched from grpc's threads
  return grpc::ByteBuffer(&slice, 1);
}

class Transport;

// One RPC. Owned by Transport::calls_ (shared_ptr) from creation until OnDone.
class Call : public grpc::ServerGenericBidiReactor, public std::enable_shared_from_this<Call> {
 public:
  Call(Transport* t, grpc::GenericCallbackServerContext* ctx, uint64_t id, bool streaming)
      : t_(t), ctx_(ctx), id_(id), streaming_(streaming) {}

  void Begin();
  Event NewCallEvent();  // kNew with the call's method, peer, metadata and deadline
  bool Announce(Event ev);  // push kNew unless the call was cancelled first (then nobody must start it)
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // From Python (GIL released). Both return false when the call has already been finished.
  bool Write(grpc::ByteBuffer buf);
  bool Reply(std::optional<grpc::ByteBuffer> buf, grpc::Status status, const Metadata& trailing);
  // From C++ only: finish a call nobody will answer (malformed call, server stopping).
  void FinishNow(grpc::Status status);

 private:
  Transport* t_;
  grpc::GenericCallbackServerContext* ctx_;
  const uint64_t id_;
  const bool streaming_;
  grpc::ByteBuffer read_buf_;
  std::mutex mu_;
  grpc::ByteBuffer write_buf_;           // the write in flight (one at a time: callback API rule)
  std::deque<grpc::ByteBuffer> queued_;  // writes waiting for it
  bool writing_ = false;
  bool finish_requested_ = false;
  bool finish_started_ = false;
  bool announced_ = false;  // Python has been given the call (kNew pushed)
  bool cancelled_ = false;
  grpc::Status status_;
};

class Service : public grpc::CallbackGenericService {
 public:
  explicit Service(Transport* t) : t_(t) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override;

 private:
  Transport* t_;
};

class Transport {
 public:
  Transport(std::vector<std::string> addresses, std::vector<std::pair<std::string, int>> int_args,
            std::vector<std::string> streaming_methods, std::vector<Tls> tls)
      : addresses_(std::move(addresses)), int_args_(std::move(int_args)),
        streaming_(streaming_methods.begin(), streaming_methods.end()), tls_(std::move(tls)), service_(this) {
    for (const auto& t : tls_) secure_ = secure_ || !std::get<0>(t).empty();
    efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd_ < 0) throw std::runtime_error("eventfd failed");
  }

  ~Transport() {
    Shutdown(0.0);
    StopSender();
    if (efd_ >= 0) close(efd_);
  }

  // A reply or a stream message waiting for the sender thread. Why a thread: sending runs grpc's write path
  // inline (the socket write included) on the calling thread, measured at ~30% of the event-loop thread's
  // time when the loop did it; the loop is the one serial, GIL-holding thread of the process, so it only
  // queues. One FIFO for both keeps each call's messages in order, and before its finish.
  struct Pending {
    uint64_t id;
    bool finish;  // false: one message of a server stream (a kWritten event answers it)
    std::optional<grpc::ByteBuffer> buf;
    grpc::Status status;
    Metadata trailing;
  };

  void Queue(Pending p) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(smu_);
      wake = sq_.empty();
      sq_.push_back(std::move(p));
    }
    if (wake) scv_.notify_one();
  }

  // Binds every address and starts serving; returns the port bound for each address (in order).
  std::vector<int> Start() {
    if (server_) throw std::runtime_error("the transport is already started");
    grpc::ServerBuilder builder;
    for (const auto& [name, value] : int_args_) builder.AddChannelArgument(name, value);
    std::vector<int> ports(addresses_.size(), 0);
    for (size_t i = 0; i < addresses_.size(); ++i)
      builder.AddListeningPort(addresses_[i], Credentials(i), &ports[i]);
    builder.RegisterCallbackGenericService(&service_);
    if (!sender_.joinable()) sender_ = std::thread([this] { SendLoop(); });
    server_ = builder.BuildAndStart();
    for (size_t i = 0; i < addresses_.size(); ++i) {
      if (!server_ || ports[i] == 0) {
        if (server_) server_->Shutdown(std::chrono::system_clock::now());
        server_.reset();
        throw std::runtime_error("cannot listen on " + addresses_[i]);
      }
    }
    return ports;
  }

  void Shutdown(double grace_s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!server_ || stopping_) return;
      stopping_ = true;
    }
    // New calls are refused at once; calls in flight get `grace_s`, then grpc cancels them (OnCancel finishes
    // the ones Python has not answered). A call whose cancel came earlier (its client's deadline) gets no
    // second OnCancel: if its handler never answers, the watchdog finishes it shortly after the deadline,
    // so Shutdown cannot wait forever on a Python side that is stuck or gone.
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(std::max(0.0, grace_s) * 1e6));
    std::thread watchdog([this, deadline] {
      {
        std::unique_lock<std::mutex> lock(wmu_);
        if (wcv_.wait_until(lock, deadline + std::chrono::milliseconds(500), [this] { return stopped_; })) return;
      }
      std::vector<std::shared_ptr<Call>> left;
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (const auto& [id, call] : calls_) left.push_back(call);
      }
      for (auto& call : left)
        call->FinishNow(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server stopped before the call finished"));
    });
    server_->Shutdown(deadline);  // the sender keeps finishing the calls answered meanwhile
    server_->Wait();
    {
      std::lock_guard<std::mutex> lock(wmu_);
      stopped_ = true;
    }
    wcv_.notify_all();
    watchdog.join();
  }

  std::shared_ptr<grpc::ServerCredentials> Credentials(size_t i) const {
    if (i >= tls_.size() || std::get<0>(tls_[i]).empty()) return grpc::InsecureServerCredentials();
    const auto& [chain, key, ca] = tls_[i];
    grpc::SslServerCredentialsOptions opts(ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                      : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    opts.pem_root_certs = ca;
    opts.pem_key_cert_pairs.push_back({key, chain});
    return grpc::SslServerCredentials(opts);
  }

  bool secure() const { return secure_; }
  int fileno() const { return efd_; }
  bool stopping() {
    std::lock_guard<std::mutex> lock(mu_);
    return stopping_;
  }
  size_t active() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_.size();
  }

  // ---- called by Call/Service on grpc threads -------------------------------------------------------
  grpc::ServerGenericBidiReactor* NewCall(grpc::GenericCallbackServerContext* ctx) {
    bool streaming = streaming_.count(ctx->method()) > 0;
    std::shared_ptr<Call> call;
    {
      std::lock_guard<std::mutex> lock(mu_);
      uint64_t id = next_id_++;
      call = std::make_shared<Call>(this, ctx, id, streaming);
      calls_[id] = call;
    }
    call->Begin();
    return call.get();
  }

  void Forget(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.erase(id);
  }

  void Push(Event ev) {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(ev));
    if (!signalled_) {
      signalled_ = true;
      uint64_t one = 1;
      ssize_t n = write(efd_, &one, sizeof(one));
      (void)n;  // a full counter (impossible: we reset it on every poll) would still leave it readable
    }
  }

  // ---- called from Python ---------------------------------------------------------------------------
  std::deque<Event> TakeEvents() {
    std::deque<Event> out;
    std::lock_guard<std::mutex> lock(mu_);
    out.swap(events_);
    signalled_ = false;
    uint64_t count;
    ssize_t n = read(efd_, &count, sizeof(count));
    (void)n;
    return out;
  }

  std::shared_ptr<Call> Find(uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = calls_.find(id);
    return it == calls_.end() ? nullptr : it->second;
  }

 private:
  void SendLoop() {
    std::deque<Pending> batch;
    while (true) {
      {
        std::unique_lock<std::mutex> lock(smu_);
        scv_.wait(lock, [this] { return !sq_.empty() || sender_stop_; });
        if (sq_.empty()) return;  // stopping, nothing left
        batch.swap(sq_);
      }
      for (auto& p : batch) {
        auto call = Find(p.id);
        if (p.finish) {
          if (call) call->Reply(std::move(p.buf), std::move(p.status), p.trailing);
        } else if (!call || !call->Write(std::move(*p.buf))) {
          Event ev{kWritten, p.id};  // the call has ended: tell a writer waiting for its window
          ev.ok = false;
          Push(std::move(ev));
        }
      }
      batch.clear();
    }
  }

  void StopSender() {
    {
      std::lock_guard<std::mutex> lock(smu_);
      sender_stop_ = true;
    }
    scv_.notify_one();
    if (sender_.joinable()) sender_.join();
  }

  std::vector<std::string> addresses_;
  std::vector<std::pair<std::string, int>> int_args_;
  std::set<std::string> streaming_;
  std::vector<Tls> tls_;
  bool secure_ = false;  // some port speaks TLS: calls carry their client certificate's CN
  Service service_;
  std::unique_ptr<grpc::Server> server_;
  int efd_ = -1;
  std::mutex mu_;
  bool stopping_ = false;
  bool signalled_ = false;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::shared_ptr<Call>> calls_;
  std::deque<Event> events_;
  std::thread sender_;
  std::mutex smu_;
  std::condition_variable scv_;
  std::deque<Pending> sq_;
  bool sender_stop_ = false;
  std::mutex wmu_;  // the shutdown watchdog's
  std::condition_variable wcv_;
  bool stopped_ = false;
};

grpc::ServerGenericBidiReactor* Service::CreateReactor(grpc::GenericCallbackServerContext* ctx) {
  return t_->NewCall(ctx);
}

Event Call::NewCallEvent() {
  Event ev{kNew, id_};
  ev.method = ctx_->method();
  ev.peer = ctx_->peer();
  if (t_->secure()) {
    auto auth = ctx_->auth_context();
    if (auth && !auth->FindPropertyValues("x509_pem_cert").empty()) {
      auto cn = auth->FindPropertyValues("x509_common_name");
      ev.cert_cn = cn.empty() ? std::string() : std::string(cn[0].data(), cn[0].size());
    }
  }
  for (const auto& [k, v] : ctx_->client_metadata())
    ev.metadata.emplace_back(std::string(k.data(), k.size()), std::string(v.data(), v.size()));
  auto deadline = ctx_->deadline();
  if (deadline != std::chrono::system_clock::time_point::max())
    ev.timeout_s = std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
  return ev;
}

bool Call::Announce(Event ev) {
  std::lock_guard<std::mutex> lock(mu_);  // against OnCancel: Python gets kNew before kCancel, or neither
  if (cancelled_) return false;
  announced_ = true;
  t_->Push(std::move(ev));
  return true;
}

void Call::Begin() {
  if (streaming_) Announce(NewCallEvent());  // client-streaming: announce the call now, messages follow
  StartRead(&read_buf_);
}

void Call::OnReadDone(bool ok) {
  if (!streaming_) {
    if (!ok) {  // the client half-closed (or went away) before its one request message
      FinishNow(grpc::Status(grpc::StatusCode::INTERNAL, "the call carried no request message"));
      return;
    }
    // One request message: the call is whole. No second read: the half-close needs no answer.
    Event ev = NewCallEvent();
    ev.data = ToString(read_buf_);
    if (!Announce(std::move(ev)))
      FinishNow(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled before it started"));
    return;
  }
  if (!ok) {
    t_->Push(Event{kHalfClose, id_});
    return;
  }
  Event ev{kMessage, id_};
  ev.data = ToString(read_buf_);
  t_->Push(std::move(ev));
  StartRead(&read_buf_);
}

bool Call::Write(grpc::ByteBuffer buf) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finish_requested_) return false;
    if (writing_) {
      queued_.push_back(std::move(buf));
      return true;
    }
    writing_ = true;
    write_buf_ = std::move(buf);
  }
  StartWrite(&write_buf_);
  return true;
}

void Call::OnWriteDone(bool ok) {
  bool next = false, finish = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ok) queued_.clear();  // the stream is broken: the rest cannot be delivered either
    if (!queued_.empty()) {
      write_buf_ = std::move(queued_.front());
      queued_.pop_front();
      next = true;
    } else {
      writing_ = false;
      if (finish_requested_ && !finish_started_) finish = finish_started_ = true;
    }
  }
  Event ev{kWritten, id_};
  ev.ok = ok;
  t_->Push(std::move(ev));
  if (next) StartWrite(&write_buf_);
  if (finish) Finish(status_);
}

bool Call::Reply(std::optional<grpc::ByteBuffer> buf, grpc::Status status, const Metadata& trailing) {
  bool write_and_finish = false, finish = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finish_requested_) return false;
    finish_requested_ = true;
    for (const auto& [k, v] : trailing) ctx_->AddTrailingMetadata(k, v);
    status_ = status;
    if (buf && status.ok()) {
      if (writing_) {
        queued_.push_back(std::move(*buf));  // finished by OnWriteDone once the queue drains
      } else {
        write_buf_ = std::move(*buf);
        write_and_finish = finish_started_ = true;
      }
    } else if (!writing_) {
      finish = finish_started_ = true;
    }
  }
  if (write_and_finish) StartWriteAndFinish(&write_buf_, grpc::WriteOptions(), status_);
  if (finish) Finish(status_);
  return true;
}

void Call::FinishNow(grpc::Status status) { Reply(std::nullopt, std::move(status), {}); }

void Call::OnCancel() {
  bool announced;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    announced = announced_;
  }
  if (announced) t_->Push(Event{kCancel, id_});  // Python cancels its handler, then finishes the call
  if (!announced)  // nobody else will: a cancelled call must still be finished (callback API rule)
    FinishNow(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled before it started"));
  else if (t_->stopping())
    FinishNow(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
}

void Call::OnDone() {
  auto self = shared_from_this();  // keeps this alive until the end of this function
  t_->Forget(id_);
}

grpc::Status MakeStatus(int code, const std::string& details) {
  if (code < 0 || code > 16) code = static_cast<int>(grpc::StatusCode::UNKNOWN);
  return grpc::Status(static_cast<grpc::StatusCode>(code), details);
}

py::list Poll(Transport& t) {
  std::deque<Event> events;
  {
    py::gil_scoped_release release;
    events = t.TakeEvents();
  }
  py::list out(events.size());
  size_t i = 0;
  for (auto& ev : events) {
    py::object data = ev.data ? py::object(py::bytes(*ev.data)) : py::object(py::none());
    switch (ev.kind) {
      case kNew: {
        py::tuple md(ev.metadata.size());
        for (size_t j = 0; j < ev.metadata.size(); ++j) {
          const auto& [k, v] = ev.metadata[j];
          // -bin values are arbitrary bytes; the others are ASCII text (gRPC's rule), as in grpc.aio
          bool binary = k.size() > 4 && k.compare(k.size() - 4, 4, "-bin") == 0;
          py::object value = binary ? py::object(py::bytes(v)) : py::object(py::str(v));
          md[j] = py::make_tuple(py::str(k), value);
        }
        py::object cn = ev.cert_cn ? py::object(py::str(*ev.cert_cn)) : py::object(py::none());
        out[i++] = py::make_tuple(ev.kind, ev.id, py::str(ev.method), data, md, ev.timeout_s, py::str(ev.peer), cn);
        break;
      }
      case kMessage:
        out[i++] = py::make_tuple(ev.kind, ev.id, data);
        break;
      case kWritten:
        out[i++] = py::make_tuple(ev.kind, ev.id, ev.ok);
        break;
      default:
        out[i++] = py::make_tuple(ev.kind, ev.id);
    }
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_grpc_transport, m) {
  m.doc() = "latentserve's compiled gRPC transport (see services/frontends/grpc/transport.py)";
  m.attr("NEW") = static_cast<int>(kNew);
  m.attr("MESSAGE") = static_cast<int>(kMessage);
  m.attr("HALF_CLOSE") = static_cast<int>(kHalfClose);
  m.attr("CANCEL") = static_cast<int>(kCancel);
  m.attr("WRITTEN") = static_cast<int>(kWritten);
  m.attr("GRPC_VERSION") = grpc::Version();
  py::class_<Transport>(m, "Transport")
      .def(py::init<std::vector<std::string>, std::vector<std::pair<std::string, int>>, std::vector<std::string>,
                    std::vector<Tls>>(),
           py::arg("addresses"), py::arg("int_args"), py::arg("streaming_methods"), py::arg("tls"),
           "tls: per address (certificate chain PEM, key PEM, client CA PEM); an empty chain = plaintext, a CA = "
           "mutual TLS")
      .def("start", &Transport::Start, py::call_guard<py::gil_scoped_release>(),
           "bind every address, start serving; the bound port of each address")
      .def("shutdown", &Transport::Shutdown, py::arg("grace_s"), py::call_guard<py::gil_scoped_release>(),
           "refuse new calls, give calls in flight grace_s, then cancel them; blocks until all are done")
      .def("fileno", &Transport::fileno, "an eventfd, readable while events are queued")
      .def("active", &Transport::active, "calls not yet done")
      .def("poll", &Poll, "every queued event, as tuples (kind, call id, ...); never blocks")
      .def(
          "reply",
          [](Transport& t, uint64_t id, py::object data, int code, const std::string& details,
             const Metadata& trailing) {
            std::optional<grpc::ByteBuffer> buf;
            if (!data.is_none()) {
              char* ptr;
              Py_ssize_t size;
              if (PyBytes_AsStringAndSize(data.ptr(), &ptr, &size) != 0) throw py::error_already_set();
              buf = ToBuffer(ptr, static_cast<size_t>(size));
            }
            Transport::Pending p{id, true, std::move(buf), MakeStatus(code, details), trailing};
            py::gil_scoped_release release;
            t.Queue(std::move(p));
          },
          py::arg("call_id"), py::arg("data"), py::arg("code"), py::arg("details"), py::arg("trailing"),
          "finish a call (queued for the sender thread): one last message (None: none), status code and "
          "details, trailing metadata")
      .def(
          "write",
          [](Transport& t, uint64_t id, py::bytes data) {
            char* ptr;
            Py_ssize_t size;
            if (PyBytes_AsStringAndSize(data.ptr(), &ptr, &size) != 0) throw py::error_already_set();
            Transport::Pending p{id, false, ToBuffer(ptr, static_cast<size_t>(size)), grpc::Status::OK, {}};
            py::gil_scoped_release release;
            t.Queue(std::move(p));
          },
          py::arg("call_id"), py::arg("data"),
          "queue one message of a server stream; a WRITTEN event follows (ok=False: the call had ended)");
}
