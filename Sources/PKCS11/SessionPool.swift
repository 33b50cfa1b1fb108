import CP11Kit
import Foundation

/// Logged-in sessions on one token, lent to one thread at a time.
///
/// A PKCS#11 session runs a single operation at a time, even in a module
/// initialised with OS locking (parallel handshakes on one SoftHSM session fail
/// with `CKR_OPERATION_ACTIVE` and can crash it). The pool opens up to `maximumSessions`
/// sessions and makes further borrowers wait. Login state belongs to the token and
/// the process, so the pool logs in once, on its first session.
///
/// The pool keeps a copy of the PIN, wiped when the pool is released, so that a child
/// process after `fork()` can open new sessions and log in again: the parent's sessions
/// and login are void there.
public final class SessionPool: @unchecked Sendable {
    public let token: Token
    public let maximumSessions: Int
    // Guarded by `condition`.
    private var idle: [Session] = []
    private var openCount = 0
    private let condition = NSCondition()
    private let pin: SecretBytes?

    /// Opens the first session and logs in with `pin`, unless `pin` is nil (a token
    /// that needs no login, or one already logged in by this process).
    public init(token: Token, pin: SecretBytes?, maximumSessions: Int = 8) throws {
        self.token = token
        self.maximumSessions = max(1, maximumSessions)
        self.pin = pin.map { secret in secret.withUnsafeBytes { SecretBytes(copying: $0) } }
        let first = try token.openSession()
        if let pin {
            try first.login(pin: pin)
        }
        idle.append(first)
        openCount = 1
    }

    /// Runs `body` with a session that no other thread uses meanwhile.
    ///
    /// A session whose handle the module no longer accepts (for example after the
    /// token was removed) is closed instead of returned to the pool.
    public func withSession<Result>(_ body: (Session) throws -> Result) throws -> Result {
        let session = try borrow()
        do {
            let result = try body(session)
            giveBack(session, keep: true)
            return result
        } catch let error as PKCS11Error {
            giveBack(session, keep: !SessionPool.invalidatesSession(error.returnValue))
            throw error
        } catch {
            giveBack(session, keep: true)
            throw error
        }
    }

    private func borrow() throws -> Session {
        try token.module.initializeIfForked()
        condition.lock()
        if let stale = idle.first, !stale.isCurrent {
            // A forked child: the parent's sessions are void and nothing is logged in.
            idle.removeAll()
            openCount = 0
        }
        while idle.isEmpty && openCount >= maximumSessions {
            condition.wait()
        }
        if let session = idle.popLast() {
            condition.unlock()
            return session
        }
        openCount += 1
        let firstSession = openCount == 1
        condition.unlock()
        do {
            let session = try token.openSession()
            if firstSession, let pin {
                try session.login(pin: pin)
            }
            return session
        } catch {
            condition.lock()
            openCount -= 1
            condition.signal()
            condition.unlock()
            throw error
        }
    }

    private func giveBack(_ session: Session, keep: Bool) {
        condition.lock()
        if !session.isCurrent {
            // Borrowed before a fork: it counts neither as open nor as idle any more.
            condition.unlock()
            return
        }
        if keep {
            idle.append(session)
        } else {
            openCount -= 1
        }
        condition.signal()
        condition.unlock()
    }

    private static func invalidatesSession(_ returnValue: UInt) -> Bool {
        let fatal: Set<UInt> = [
            UInt(CKR_SESSION_HANDLE_INVALID), UInt(CKR_SESSION_CLOSED), UInt(CKR_DEVICE_REMOVED),
            UInt(CKR_TOKEN_NOT_PRESENT), UInt(CKR_DEVICE_ERROR), UInt(CKR_OPERATION_ACTIVE),
        ]
        return fatal.contains(returnValue)
    }
}
