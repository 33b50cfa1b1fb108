import Foundation
import Synchronization

/// The nginx of `scripts/test-server`, on free ports of 127.0.0.1, shared by the tests
/// of one process and stopped when the process exits.
public final class TestServer: Sendable {
    public static let shared: TestServer = {
        do {
            return try TestServer(environment: TestEnvironment.shared)
        } catch {
            fatalError("starting nginx failed: \(error)")
        }
    }()

    public let tlsPort: Int
    /// mTLS with TLS 1.2 and 1.3.
    public let mtlsPort: Int
    public let mtls13Port: Int
    public let mtls12Port: Int
    /// mTLS that trusts only the other client CA of `scripts/make-certs`.
    public let mtlsOtherPort: Int
    public let runFolder: String
    private static let stopCommand = Mutex<[String]>([])

    private init(environment: TestEnvironment) throws {
        let ports = try freePorts(5)
        (tlsPort, mtlsPort, mtls13Port, mtls12Port, mtlsOtherPort) = (ports[0], ports[1], ports[2], ports[3], ports[4])
        runFolder = environment.root.appendingPathComponent("nginx").path
        let script = environment.packageRoot.appendingPathComponent("scripts/test-server").path
        let result = try TestEnvironment.run(
            script,
            [
                "start", "--certs", environment.certificates.path, "--dir", runFolder, "--tls-port", "\(tlsPort)", "--mtls-port",
                "\(mtlsPort)", "--mtls13-port", "\(mtls13Port)", "--mtls12-port", "\(mtls12Port)", "--mtls-other-port",
                "\(mtlsOtherPort)",
            ])
        guard result.status == 0 else {
            throw TestFailure("scripts/test-server start failed: \(result.standardError)")
        }
        TestServer.stopCommand.withLock { $0 = [script, "stop", "--dir", runFolder] }
        atexit {
            let command = TestServer.stopCommand.withLock { $0 }
            if !command.isEmpty {
                _ = try? TestEnvironment.run(command[0], Array(command.dropFirst()))
            }
        }
    }

    /// Lines of an access log of `scripts/test-server`, for example "mtls-access.log".
    public func accessLog(_ name: String) -> [String] {
        let path = runFolder + "/" + name
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").map(String.init)
    }
}

/// Opens a TCP socket bound to a free port of 127.0.0.1, listening when `listening`
/// is true, and returns it with its port. The caller closes the socket.
func bindLoopback(listening: Bool) throws -> (descriptor: Int32, port: Int) {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw TestFailure("socket() failed") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ready = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Bool in
            bind(descriptor, pointer, length) == 0 && (!listening || listen(descriptor, 16) == 0)
                && getsockname(descriptor, pointer, &length) == 0
        }
    }
    guard ready else {
        close(descriptor)
        throw TestFailure("binding a socket to 127.0.0.1 failed")
    }
    return (descriptor, Int(UInt16(bigEndian: address.sin_port)))
}

/// Ports on 127.0.0.1 that were free a moment ago, found by binding to port 0.
public func freePorts(_ count: Int) throws -> [Int] {
    var sockets: [Int32] = []
    defer { sockets.forEach { close($0) } }
    var ports: [Int] = []
    for _ in 0..<count {
        let bound = try bindLoopback(listening: false)
        sockets.append(bound.descriptor)
        ports.append(bound.port)
    }
    return ports
}

/// A TCP listener on 127.0.0.1 that accepts connections and never replies, for timeout tests.
public final class SilentServer: @unchecked Sendable {
    public let port: Int
    private let descriptor: Int32

    public init() throws {
        (descriptor, port) = try bindLoopback(listening: true)
    }

    deinit {
        close(descriptor)
    }
}

/// A TCP server on 127.0.0.1 that reads the start of each connection (the TLS
/// ClientHello) and then closes it, as a server that fails mid-handshake would.
public final class ClosingServer: @unchecked Sendable {
    public let port: Int
    private let descriptor: Int32

    public init() throws {
        let (descriptor, port) = try bindLoopback(listening: true)
        self.descriptor = descriptor
        self.port = port
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: 64)
            while true {
                let connection = accept(descriptor, nil, nil)
                if connection < 0 { return }
                _ = read(connection, &buffer, buffer.count)
                close(connection)
            }
        }
        thread.start()
    }

    deinit {
        shutdown(descriptor, Int32(SHUT_RDWR))
        close(descriptor)
    }
}
