import COpenSSL

/// The entries of OpenSSL's per-thread error queue at the time of a failure, with text.
public struct OpenSSLErrorQueue: Sendable, CustomStringConvertible {
    public let entries: [String]

    /// Empties the calling thread's error queue into a value.
    public static func drain() -> OpenSSLErrorQueue {
        var entries: [String] = []
        var file: UnsafePointer<CChar>?
        var line: Int32 = 0
        var data: UnsafePointer<CChar>?
        var flags: Int32 = 0
        while true {
            let code = ERR_get_error_all(&file, &line, nil, &data, &flags)
            if code == 0 {
                break
            }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            var text = string(fromCString: buffer)
            if let data, flags & ERR_TXT_STRING != 0, data.pointee != 0 {
                text += " (" + String(cString: data) + ")"
            }
            entries.append(text)
        }
        return OpenSSLErrorQueue(entries: entries)
    }

    /// Empties the queue without reading it. OpenSSL 3.0 leaves unrelated entries behind
    /// after successful calls, so clear the queue before a call whose failure you read.
    public static func clear() {
        ERR_clear_error()
    }

    /// Whether any entry contains `text`, such as a reason string.
    public func contains(_ text: String) -> Bool {
        entries.contains { $0.localizedLowercase.contains(text.lowercased()) }
    }

    public var description: String {
        entries.isEmpty ? "no detail from OpenSSL" : entries.joined(separator: "; ")
    }
}
