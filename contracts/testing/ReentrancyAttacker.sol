// SPDX-License-Identifier: MIT
pragma solidity 0.8.28;

/// @title A hostile wallet used by the tests, never deployed by the testbed.
/// @notice Registered as a MEC server (and its own wallet W_m) or set as a UE's wallet W_u, it
/// re-enters the trading contract from receive() with a call chosen by the test, as often as
/// allowed, recording whether each re-entry succeeded and the selector of the error it met.
contract ReentrancyAttacker {
    address public target;
    bytes public reentryCall;
    uint256 public maxReentries;
    bool public rejectPayments;

    uint256 public received;        // ether received, wei
    uint256 public reentries;       // re-entries attempted
    uint256 public reentrySuccesses;
    bytes4 public lastError;        // selector of the last re-entry's revert

    constructor(address target_) {
        target = target_;
    }

    /// What receive() should call on the target, and how many times at most (counters reset).
    function arm(bytes calldata call_, uint256 maxReentries_) external {
        reentryCall = call_;
        maxReentries = maxReentries_;
        reentries = 0;
        reentrySuccesses = 0;
        lastError = bytes4(0);
    }

    function setRejectPayments(bool reject) external {
        rejectPayments = reject;
    }

    /// Forward any call to the target as this contract (e.g. complete() as the MEC server).
    function execute(bytes calldata call_) external payable {
        (bool ok, bytes memory ret) = target.call{value: msg.value}(call_);
        if (!ok) {
            assembly { revert(add(ret, 32), mload(ret)) }
        }
    }

    receive() external payable {
        if (rejectPayments) revert("payments rejected");
        received += msg.value;
        if (reentries < maxReentries) {
            reentries += 1;
            (bool ok, bytes memory ret) = target.call(reentryCall);
            if (ok) {
                reentrySuccesses += 1;
            } else if (ret.length >= 4) {
                lastError = bytes4(ret);
            }
        }
    }
}
