"""pyrtmp 0.3.1's SimpleRTMPController recording each publication into an FLV file, as its README
shows. Used by tests/rtmp_tolerance.rs: usage: python pyrtmp_record.py OUT.flv; prints the port
it listens on (127.0.0.1, chosen by the system) on the first line of stdout."""

import asyncio
import logging
import sys

from pyrtmp import StreamClosedException
from pyrtmp.flv import FLVFileWriter, FLVMediaType
from pyrtmp.rtmp import RTMPProtocol, SimpleRTMPController

# pyrtmp logs every message at DEBUG to stderr: nobody reads it.
logging.disable(logging.WARNING)


class Recorder(SimpleRTMPController):
    def __init__(self, output: str) -> None:
        self.output = output
        super().__init__()

    async def on_ns_publish(self, session, message) -> None:
        session.state = FLVFileWriter(output=self.output)
        await super().on_ns_publish(session, message)

    async def on_metadata(self, session, message) -> None:
        session.state.write(0, message.to_raw_meta(), FLVMediaType.OBJECT)
        await super().on_metadata(session, message)

    async def on_video_message(self, session, message) -> None:
        session.state.write(message.timestamp, message.payload, FLVMediaType.VIDEO)
        await super().on_video_message(session, message)

    async def on_audio_message(self, session, message) -> None:
        session.state.write(message.timestamp, message.payload, FLVMediaType.AUDIO)
        await super().on_audio_message(session, message)

    async def on_stream_closed(self, session, exception: StreamClosedException) -> None:
        if isinstance(session.state, FLVFileWriter):
            session.state.close()
        await super().on_stream_closed(session, exception)


async def main() -> None:
    loop = asyncio.get_event_loop()
    server = await loop.create_server(
        lambda: RTMPProtocol(controller=Recorder(sys.argv[1])), host="127.0.0.1", port=0
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


asyncio.run(main())
